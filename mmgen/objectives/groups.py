"""Which generation targets of a packed micro-batch form the IMM particle groups.

A group's M particles share (s, r, t), and its MMD compares the distribution of y_t with that of y_r. With
`imm.group_by = "position"` (the paper) consecutive targets form a group, whatever their prompts. A group of
M different prompts then holds one particle per conditional distribution, and its MMD only compares mixtures
of them. With `group_by = "prompt"` targets that see the same context (the same text since the start of their
document and no earlier image) are grouped first, so each group holds M particles of one conditional
distribution, as IMM.md suggests for data sets with few distinct prompts (CIFAR-10 class captions).
Condition dropout is decided per target before grouping, and the dropped targets share one key: their
images are draws from the data marginal, which is what the unconditional flow map transports (dropping a
whole group of one prompt would ask the unconditional map to transport that prompt's distribution).

The trainer draws every micro-batch's groups before its forwards, so it knows the number of groups (the loss
normaliser) first.
"""

from __future__ import annotations

import torch

from mmgen.config import ObjectiveConfig
from mmgen.data.plan import KIND_TEXT, TokenPlan


def imm_groups(n_targets: int, M: int) -> list[int]:
    """Group sizes for n targets: as many groups as fit M, the remainder spread over them (sizes differ by at
    most one, each >= M); a batch with fewer than M targets forms one smaller group."""
    if n_targets == 0:
        return []
    n_groups = max(1, n_targets // M)
    base, extra = divmod(n_targets, n_groups)
    return [base + (1 if i < extra else 0) for i in range(n_groups)]


UNCOND = ("condition dropped",)


def condition_keys(batch: TokenPlan) -> list[tuple]:
    """One hashable key per target image (in target order): the text ids of its document before its first
    token (from <s> to <boi>). A target with an image earlier in its document gets a key of its own, since
    its condition includes that image. Reads the plan on the CPU (a few small tensors)."""
    image, kind, doc, ids = (v.cpu() for v in (batch.image, batch.kind, batch.doc, batch.input_ids))
    L = image.shape[1]
    flat = image.reshape(-1)
    where = (flat >= 0).nonzero().squeeze(1)
    first = torch.full((len(batch.image_loss),), flat.numel(), dtype=torch.long)
    first.scatter_reduce_(0, flat[where], where, reduce="amin")  # flat index of each image's first token
    keys: list[tuple] = []
    for i in batch.image_loss.nonzero().squeeze(1).tolist():
        row, col = divmod(int(first[i]), L)
        context = doc[row, :col] == doc[row, col]
        if (kind[row, :col][context] != KIND_TEXT).any():
            keys.append(("image context", i))
        else:
            keys.append(tuple(ids[row, :col][context].tolist()))
    return keys


def prompt_groups(keys: list[tuple], M: int) -> tuple[list[int], list[int]]:
    """(order, sizes): target indices in group order, and the group sizes. Targets of one key form groups of
    M to 2M-1 (`imm_groups`). Targets whose key has fewer than M members are pooled, in order of appearance,
    and grouped the same way; a pool smaller than M forms one smaller group rather than joining a pure one."""
    buckets: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys):
        buckets.setdefault(k, []).append(i)
    order: list[int] = []
    sizes: list[int] = []
    rest: list[int] = []
    for members in buckets.values():
        if len(members) >= M:
            order += members
            sizes += imm_groups(len(members), M)
        else:
            rest += members
    return order + rest, sizes + imm_groups(len(rest), M)


def plan_groups(
    batch: TokenPlan, cfg: ObjectiveConfig, dropped: torch.Tensor | None = None
) -> tuple[list[int], list[int]]:
    """(order, sizes) of a micro-batch: `order[j]` is the target (in `image_loss` order) of slot j; slots
    come group after group. Flow matching: every target alone, in order. `dropped` [n_targets] bool (group_by
    = prompt): targets whose condition is dropped, grouped together under `UNCOND`."""
    n_targets = int(batch.image_loss.sum())
    if cfg.image != "imm":
        return list(range(n_targets)), [1] * n_targets
    if cfg.imm.group_by == "prompt":
        keys = condition_keys(batch)
        if dropped is not None:
            keys = [UNCOND if d else k for k, d in zip(keys, dropped.tolist())]
        return prompt_groups(keys, cfg.imm.particles)
    return list(range(n_targets)), imm_groups(n_targets, cfg.imm.particles)
