"""The interleaved sampler's rows: each row's state as the loop advances it, and the token plans of the
forwards that advance all rows in lockstep (a row with nothing to add gets invisible padding)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mmgen.data.plan import KIND_TEXT, MODEL_INPUTS, TokenPlan

UNCOND_IMAGE_ID = 1 << 20  # image ids of the unconditional copies (never a real image's id)


@dataclass
class RowOutput:
    segments: list[str | np.ndarray] = field(default_factory=list)  # generated text and images (H, W, 3) uint8
    tokens: list[int] = field(default_factory=list)


@dataclass
class RowState:
    """One row of the batch in the loop."""

    pos: int  # the next rotary position
    images: int  # images in the row so far, the prompt's included: the id of its next image
    out: RowOutput = field(default_factory=RowOutput)
    drawn: int = 0  # images generated
    text: int = 0  # text tokens generated (<boi>, <eoi> and </s> aside)
    pending: list[int] = field(default_factory=list)  # text ids since the last image
    done: bool = False

    def flush_text(self, text_tok) -> None:
        """The text since the last image becomes a segment of the output."""
        if self.pending:
            self.out.segments.append(text_tok.decode(self.pending, skip_special_tokens=True).strip())
            self.pending = []


def pad_plan(c, B: int, L: int, device: torch.device) -> TokenPlan:
    """B x L padding tokens (document -1: invisible to everything) of model config `c`, at clean times."""
    zeros = torch.zeros(B, L, device=device)
    return TokenPlan(
        input_ids=torch.full((B, L), c.pad_token_id, dtype=torch.long, device=device),
        kind=torch.full((B, L), KIND_TEXT, dtype=torch.long, device=device),
        doc=torch.full((B, L), -1, dtype=torch.long, device=device),
        image=torch.full((B, L), -1, dtype=torch.long, device=device),
        pos=torch.zeros((3, B, L), dtype=torch.long, device=device),
        image_tokens=torch.zeros((B, L, c.patch_dim), device=device),
        t=zeros,
        s=zeros,
        uncond=torch.zeros((B, L), dtype=torch.bool, device=device),
    )


def image_plan(
    c, rows: torch.Tensor, pos: list[int], image_ids: list[int], kind: int, uncond: bool, device: torch.device
) -> TokenPlan:
    """One image copy of `kind` for every row in `rows` (bool [B]) at (p, p + row, p + col), p = pos[b]."""
    B, G = rows.shape[0], c.image_tokens
    gw = c.image_grid[1]
    plan = pad_plan(c, B, G, device)
    r, cc = torch.div(torch.arange(G), gw, rounding_mode="floor"), torch.arange(G) % gw
    for b in range(B):
        if rows[b]:
            p = pos[b]
            plan.kind[b] = kind
            plan.doc[b] = 0
            plan.image[b] = (UNCOND_IMAGE_ID + image_ids[b]) if uncond else image_ids[b]
            plan.pos[0, b], plan.pos[1, b], plan.pos[2, b] = p, p + r, p + cc
            plan.uncond[b] = uncond
    return plan


def cat_plans(a: TokenPlan, b: TokenPlan) -> TokenPlan:
    """The model inputs of two plans side by side along the tokens."""
    return TokenPlan(
        **{
            k: torch.cat([getattr(a, k), getattr(b, k)], dim=-1 if k == "pos" else 1)
            for k in MODEL_INPUTS
            if getattr(a, k) is not None
        }
    )
