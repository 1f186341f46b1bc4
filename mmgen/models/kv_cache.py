"""A static key/value cache for interleaved decoding.

Buffers are allocated once for `max_len` tokens (no reallocation per token). A forward appends its tokens'
plan columns, keys and values after the cached ones and attends over everything so far. Inside
`cache.scratch()` the appended tokens are not kept: the flow-map sampler runs every step on the same cached
prefix (only the image tokens are recomputed), then the clean image is appended for real with one forward.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from mmgen.models.attention import MaskPlan


class ContextOverflow(ValueError):
    """More tokens than the model's context."""


class KVCache:
    def __init__(self, depth: int, batch: int, n_heads: int, head_dim: int, max_len: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):  # fmt: skip
        shape = (depth, batch, n_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.doc = torch.full((batch, max_len), -1, dtype=torch.long, device=device)
        self.kind = torch.zeros((batch, max_len), dtype=torch.long, device=device)
        self.image = torch.full((batch, max_len), -1, dtype=torch.long, device=device)
        self.uncond = torch.zeros((batch, max_len), dtype=torch.bool, device=device)
        self.max_len = max_len
        self.length = 0  # tokens kept
        self._keep = True

    @classmethod
    def for_model(cls, model, batch: int, max_len: int | None = None) -> KVCache:
        c = model.config
        p = next(model.parameters())
        return cls(c.depth, batch, c.n_heads, c.head_dim, max_len or c.max_seq_len, p.device, p.dtype)

    @contextmanager
    def scratch(self):
        """Forwards inside attend to the cache but leave it as it was."""
        keep, self._keep = self._keep, False
        try:
            yield self
        finally:
            self._keep = keep

    def extend(self, plan: MaskPlan, n_new: int) -> tuple[MaskPlan, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Place the new tokens' plan columns after the kept ones; return the mask plan over all of them and,
        per layer, (k, v) views whose last `n_new` slots the layer fills."""
        start, end = self.length, self.length + n_new
        if end > self.max_len:
            raise ContextOverflow(
                f"{end} tokens exceed the context of {self.max_len}: shorten the prompt or the generation"
            )
        if plan.doc.shape[0] != self.doc.shape[0]:
            raise ValueError(f"cache holds {self.doc.shape[0]} rows, the forward has {plan.doc.shape[0]}")
        self.doc[:, start:end] = plan.doc
        self.kind[:, start:end] = plan.kind
        self.image[:, start:end] = plan.image
        self.uncond[:, start:end] = plan.uncond
        full = MaskPlan(self.doc[:, :end], self.kind[:, :end], self.image[:, :end], self.uncond[:, :end], start)
        views = [(self.k[i, :, :, :end], self.v[i, :, :, :end]) for i in range(self.k.shape[0])]
        if self._keep:
            self.length = end
        return full, views
