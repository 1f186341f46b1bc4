"""Attention over packed interleaved sequences: one mask rule, two backends.

The rule (`mask_mod(b, h, q, kv)`, read off the token plan):
  - attention stays within a document (padding tokens see only themselves);
  - a noisy image copy is invisible to every token but those of the same noisy copy;
  - tokens of one image copy see each other bidirectionally;
  - otherwise attention is causal in sequence order (text, and earlier clean images);
  - an unconditional noisy copy (condition dropout / the CFG branch) sees only itself.

The same function yields a dense boolean mask for `scaled_dot_product_attention` (CPU, tests, short
sequences) and a FlexAttention `BlockMask` (GPU): the block mask is built once per forward, shared by all
layers and heads (no per-head dimension), and `flex_attention` is compiled so it never materialises scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from mmgen.data.plan import KIND_NOISY

Backend = Literal["sdpa", "flex"]


@dataclass
class MaskPlan:
    """Per-token columns the mask reads, [B, Lk] over the key sequence; queries are keys `q_offset` on."""

    doc: torch.Tensor
    kind: torch.Tensor
    image: torch.Tensor
    uncond: torch.Tensor  # bool: the token belongs to an image whose noisy copy is unconditional
    q_offset: int = 0  # queries are the last Lq keys when decoding with a cache

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


def block_mask(plan: MaskPlan, q_len: int, block_size: int = 128):
    """FlexAttention BlockMask from the same rule (H=None: one mask for every head)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):  # a plain function: flex tells mask_mod from score_mod by its arity
        return plan.mask_mod(b, h, q_idx, kv_idx)

    B, Lk = plan.doc.shape
    return create_block_mask(mask_mod, B, None, q_len, Lk, device=plan.doc.device, BLOCK_SIZE=block_size)


_compiled_flex = None


def _flex():
    global _compiled_flex
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
            return _flex()(q, k, v, block_mask=self.blocks)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.dense)
