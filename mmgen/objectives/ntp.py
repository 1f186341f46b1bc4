"""Next-token prediction on the text positions of a packed batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmgen.data.plan import IGNORE


def text_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions that carry a target ([B, L] bool) and the targets there ([n], row-major)."""
    where = labels != IGNORE
    return where, labels[where]


def ntp_loss_sum(logits: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy (fp32) over the target positions; 0 when there are none (a batch may hold no
    text targets: never an empty-mean NaN)."""
    if logits is None or targets.numel() == 0:
        return torch.zeros((), device=targets.device)
    return F.cross_entropy(logits.float(), targets, reduction="sum")
