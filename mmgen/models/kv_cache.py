"""A key/value cache for interleaved decoding.

Buffers start at `capacity` slots and double when a forward needs more (a few reallocations per generation,
none per token). A forward appends its tokens' plan columns, keys and values after the cached ones and
attends over everything so far. Slots are storage, not positions (rotary positions travel with the tokens),
so a batch whose rows draw images at different times may use more slots than one row's context; `max_len`,
when set, is a hard limit on slots. Inside `cache.scratch()` the appended tokens are not kept: the flow-map
sampler runs every step on the same cached prefix (only the image tokens are recomputed), then the clean
image is appended for real with one forward.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from mmgen.errors import PromptError
from mmgen.models.attention import MaskPlan


class ContextOverflow(PromptError):
    """More tokens than the model's context."""


class KVCache:
    def __init__(
        self,
        depth: int,
        batch: int,
        n_heads: int,
        head_dim: int,
        max_len: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        capacity: int | None = None,
    ):
        capacity = capacity or max_len
        if not capacity:
            raise ValueError("KVCache needs a capacity or a max_len")
        self.k = torch.zeros((depth, batch, n_heads, capacity, head_dim), device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.doc = torch.full((batch, capacity), -1, dtype=torch.long, device=device)
        self.kind = torch.zeros((batch, capacity), dtype=torch.long, device=device)
        self.image = torch.full((batch, capacity), -1, dtype=torch.long, device=device)
        self.uncond = torch.zeros((batch, capacity), dtype=torch.bool, device=device)
        self.max_len = max_len
        self.length = 0  # tokens kept
        self._keep = True

    @classmethod
    def for_model(cls, model, batch: int, max_len: int | None = None, capacity: int | None = None) -> KVCache:
        """A cache for `model`'s layers; `max_len` (default: none) caps the slots, `capacity` is the first
        allocation (default: max_len, else the model's context)."""
        c = model.config
        p = next(model.parameters())
        capacity = capacity or max_len or c.max_seq_len
        return cls(c.depth, batch, c.n_heads, c.head_dim, max_len, p.device, p.dtype, capacity)

    @property
    def capacity(self) -> int:
        return self.doc.shape[1]

    def _grow(self, need: int) -> None:
        """Reallocate for at least `need` slots (doubling), keeping the filled ones."""
        new = max(need, 2 * self.capacity)
        if self.max_len is not None:
            new = min(new, self.max_len)
        n = self.length
        for name in ("k", "v"):  # [depth, batch, heads, slots, head_dim]
            old = getattr(self, name)
            buf = old.new_zeros((*old.shape[:3], new, old.shape[4]))
            buf[:, :, :, :n] = old[:, :, :, :n]
            setattr(self, name, buf)
        for name, fill in (("doc", -1), ("kind", 0), ("image", -1), ("uncond", 0)):  # [batch, slots]
            old = getattr(self, name)
            buf = torch.full((old.shape[0], new), fill, dtype=old.dtype, device=old.device)
            buf[:, :n] = old[:, :n]
            setattr(self, name, buf)

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
        if self.max_len is not None and end > self.max_len:
            raise ContextOverflow(
                f"{end} tokens exceed the context of {self.max_len}: shorten the prompt or the generation"
            )
        if end > self.capacity:
            self._grow(end)
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
