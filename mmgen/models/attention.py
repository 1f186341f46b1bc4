"""Attention over packed interleaved sequences: one mask rule, two backends.

The rule (`mask_mod(b, h, q, kv)`, read off the token plan):
  - attention stays within a document (padding tokens see only themselves);
  - a noisy image copy is invisible to every token but those of the same noisy copy;
  - tokens of one image copy see each other bidirectionally;
  - otherwise attention is causal in sequence order (text, and earlier clean images);
  - an unconditional noisy copy (condition dropout / the CFG branch) sees only itself.

The same function yields a dense boolean mask for `scaled_dot_product_attention` (CPU, tests, short
sequences) and a FlexAttention `BlockMask` (GPU): the block mask is built once per batch, shared by all
layers and heads (no per-head dimension), and `flex_attention` is compiled so it never materialises scores.
Because the document ids are part of the rule, a 128 x 128 tile between two packed documents is empty and
the kernel skips it: on rows that pack many short documents the work grows with the documents' lengths,
not with the row's.

`model.attention` chooses: `auto` = flex on CUDA, sdpa elsewhere. On the CPU flex runs torch's eager
reference (it materialises scores and has no backward there), so it serves tests and inference only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from mmgen.data.plan import KIND_NOISY, TokenPlan

Backend = Literal["sdpa", "flex"]
ATTENTION_CHOICES = ("auto", "sdpa", "flex")
FLEX_BLOCK = 128  # FlexAttention's tile (queries x keys)


def resolve_backend(choice: str, device: torch.device | str) -> Backend:
    """`model.attention` on `device`: auto = flex on CUDA (block-sparse fused kernel), sdpa elsewhere."""
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"model.attention must be one of {', '.join(ATTENTION_CHOICES)}, got {choice!r}")
    if choice == "auto":
        return "flex" if torch.device(device).type == "cuda" else "sdpa"
    return choice  # type: ignore[return-value]


@dataclass
class MaskPlan:
    """Per-token columns the mask reads, [B, Lk] over the key sequence; queries are keys `q_offset` on."""

    doc: torch.Tensor
    kind: torch.Tensor
    image: torch.Tensor
    uncond: torch.Tensor  # bool: the token belongs to an image whose noisy copy is unconditional
    q_offset: int = 0  # queries are the last Lq keys when decoding with a cache

    @classmethod
    def of(cls, plan: TokenPlan) -> MaskPlan:
        """The mask's columns of a token plan (`uncond` None: every image copy is conditional)."""
        uncond = plan.uncond if plan.uncond is not None else torch.zeros_like(plan.doc, dtype=torch.bool)
        return cls(plan.doc, plan.kind, plan.image, uncond)

    def mask_mod(self, b, h, q_idx, kv_idx):
        """Broadcasting tensor code: works on index grids (dense) and under vmap (FlexAttention)."""
        q = q_idx + self.q_offset
        dq, dk = self.doc[b, q], self.doc[b, kv_idx]
        iq, ik = self.image[b, q], self.image[b, kv_idx]
        kq, kk = self.kind[b, q], self.kind[b, kv_idx]
        same_doc = (dq == dk) & (dq >= 0)
        same_copy = (iq == ik) & (iq >= 0) & (kq == kk)
        q_isolated = (kq == KIND_NOISY) & self.uncond[b, q]
        context = (kv_idx <= q) & (kk != KIND_NOISY) & ~q_isolated
        padding_self = (dq < 0) & (kv_idx == q)
        return (same_doc & (same_copy | context)) | padding_self


def dense_mask(plan: MaskPlan, q_len: int) -> torch.Tensor:
    """[B, 1, Lq, Lk] boolean mask (True = attend)."""
    B, Lk = plan.doc.shape
    dev = plan.doc.device
    b = torch.arange(B, device=dev)[:, None, None]
    q = torch.arange(q_len, device=dev)[None, :, None]
    kv = torch.arange(Lk, device=dev)[None, None, :]
    return plan.mask_mod(b, None, q, kv).unsqueeze(1)


def block_mask(plan: MaskPlan, q_len: int, block_size: int = FLEX_BLOCK):
    """FlexAttention BlockMask from the same rule (H=None: one mask for every head). On CUDA the mask is
    evaluated by a compiled kernel tile by tile (`_compile`, in torch since 2.5), never as a [B, Lq, Lk] tensor."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):  # a plain function: flex tells mask_mod from score_mod by its arity
        return plan.mask_mod(b, h, q_idx, kv_idx)

    B, Lk = plan.doc.shape
    dev = plan.doc.device
    return create_block_mask(
        mask_mod, B, None, q_len, Lk, device=dev, BLOCK_SIZE=block_size, _compile=dev.type == "cuda"
    )


_compiled_flex = None


def _flex():
    global _compiled_flex
    if torch.compiler.is_compiling():  # inside a compiled block: inline it (no nested compile, no global guard)
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        # compiled on accelerators (fused kernel); eager elsewhere (reference path, materialises scores)
        _compiled_flex = torch.compile(flex_attention, dynamic=False) if torch.cuda.is_available() else flex_attention
    return _compiled_flex


class AttentionMask:
    """The mask of one forward in the form its backend needs, built once and shared by every layer."""

    def __init__(self, plan: MaskPlan, q_len: int, backend: Backend = "sdpa"):
        self.backend = backend
        self.plan = plan
        self.dense = dense_mask(plan, q_len) if backend == "sdpa" else None
        self.blocks = block_mask(plan, q_len) if backend == "flex" else None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, H, Lq, Dh], k/v [B, H, Lk, Dh] -> [B, H, Lq, Dh]."""
        if self.backend == "flex":
            # autocast casts SDPA's inputs but not flex's: q/k leave the fp32 QK-norm and rotary while v is
            # bf16, so cast all three to the autocast dtype (the fused kernel wants one dtype)
            dt = torch.get_autocast_dtype(q.device.type) if torch.is_autocast_enabled(q.device.type) else v.dtype
            return _flex()(q.to(dt), k.to(dt), v.to(dt), block_mask=self.blocks)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.dense)


class MaskMemo:
    """The last full-sequence forward's mask, reused while the caller passes the very same column tensors,
    unedited: IMM runs each batch twice (the forward with gradient and the stop-gradient target forward, with
    the same `doc`, `kind`, `image` and `uncond` tensors), so the mask is built once per batch.

    The check is by identity and version counter, never by value: comparing values would read CUDA tensors
    back to the host, a device sync on every forward. An in-place edit of a column (or of a view of it) bumps
    its `_version`, so it cannot leave a stale mask; new tensors with equal values build a new mask (correct,
    only slower). The memo holds the caller's tensors (so a freed tensor's id, reused by a new one, cannot
    match) and builds the mask from copies (so the mask, and flex's backward, never read an edited tensor).
    Inference-mode tensors have no version counter: their masks are never reused."""

    def __init__(self) -> None:
        self.mask: AttentionMask | None = None
        self._key: tuple | None = None  # (columns, their versions, their shapes, q_len, backend)

    def get(
        self,
        doc: torch.Tensor,
        kind: torch.Tensor,
        image: torch.Tensor,
        uncond: torch.Tensor | None,
        q_len: int,
        backend: Backend,
    ) -> AttentionMask:
        """The mask over columns [B, L] (`uncond` None: every image copy is conditional)."""
        cols = (doc, kind, image, uncond)
        present = [c for c in cols if c is not None]
        key = None
        if not any(c.is_inference() for c in present):
            key = (cols, tuple(c._version for c in present), tuple(c.shape for c in present), q_len, backend)
        old = self._key
        if key is not None and old is not None and all(a is b for a, b in zip(cols, old[0])) and key[1:] == old[1:]:
            return self.mask  # type: ignore[return-value]
        if uncond is None:
            uncond = torch.zeros_like(doc, dtype=torch.bool)
        self.mask = AttentionMask(MaskPlan(doc.clone(), kind.clone(), image.clone(), uncond.clone()), q_len, backend)
        self._key = key
        return self.mask
