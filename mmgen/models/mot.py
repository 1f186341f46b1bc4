"""Mixture-of-Transformers layer: every weight is per modality, self-attention is global.

The residual stream is kept grouped by expert for the whole forward ([N, D], text tokens first, then image
tokens; see `Routing`), so each expert runs its norms, projections and feed-forward on one contiguous slice.
Attention needs sequence order: per layer, Q/K/V are gathered once into [B, L] order and the attention
output once back, two gathers instead of a gather/scatter around every projection.

The image expert's norms are modulated by the flow-map times (adaLN: shift, scale and gate from the time
embedding, zero-initialised so the modulation is the identity at start). With `experts: dense` the image
tokens use the text expert's weights: the dense baseline of the same size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from mmgen.models.attention import AttentionMask
from mmgen.models.layers import RMSNorm, SwiGLU, apply_rope


class _Permute(torch.autograd.Function):
    """x.index_select(0, idx) for a permutation idx whose inverse is inv. A permutation's adjoint is its
    inverse, so the backward is one more gather, not the sort-and-scatter-add that the backward of advanced
    indexing (`x[idx]`) runs on CUDA."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, idx: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inv)
        return x.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inv,) = ctx.saved_tensors
        return grad.index_select(0, inv), None, None


class _Broadcast(torch.autograd.Function):
    """x.index_select(0, index) for an index with many repeats ([U, C] -> [N, C], N >> U). The backward sums
    the rows that share a source in fp32: index_add_ on bf16 runs as compare-and-swap loops on CUDA, which cost
    9 of a base step's 124 ms on an H100 (scripts/profile_step.py), fp32 atomics a fraction of that."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        (index,) = ctx.saved_tensors
        out = grad.new_zeros((ctx.rows, *grad.shape[1:]), dtype=torch.float32)
        return out.index_add_(0, index, grad.float()).to(grad.dtype), None


class ImageTimes(NamedTuple):
    """The flow-map time embedding of the image rows, stored once per distinct (t, s): an image copy's tokens
    share their times, so the adaLN projections run on a few hundred rows instead of every image token."""

    emb: torch.Tensor  # [U, D] embedding of each distinct (t, s) (SiLU'd where the blocks receive it)
    index: torch.Tensor  # [N_image] which of the U each image row has

    def per_row(self, x: torch.Tensor) -> torch.Tensor:
        """[U, ...] -> [N_image, ...]."""
        return _Broadcast.apply(x, self.index)


class Group(NamedTuple):
    """A run of stream rows that one expert processes with one kind of adaLN modulation."""

    rows: slice  # rows of the residual stream [N, D]
    expert: int  # 0 = text, 1 = image (dense: every group uses expert 0's weights)
    modulation: str  # "none" | "image" | "mixed" (dense: image rows modulated, text rows not)


class Modulation(NamedTuple):
    """The six adaLN vectors of a group's rows, each [rows, D], from the time embedding (DiT: the norm's output
    x becomes x (1 + scale) + shift, a sublayer's output y becomes y (1 + gate))."""

    attn_shift: torch.Tensor
    attn_scale: torch.Tensor
    attn_gate: torch.Tensor
    mlp_shift: torch.Tensor
    mlp_scale: torch.Tensor
    mlp_gate: torch.Tensor


@dataclass
class Routing:
    """Where tokens sit in the residual stream [N, D] (N = B * L) and which weights process which rows.

    MoT: the stream is grouped by expert (text rows first, then image rows; order kept inside a group), so each
    expert runs on one contiguous slice. Dense: the stream stays in sequence order and one set of weights
    processes every row (the image rows still get their adaLN modulation)."""

    perm: torch.Tensor | None  # [N] sequence index of each stream row (None: stream is in sequence order)
    inv: torch.Tensor | None  # [N] stream row of each sequence index
    text_rows: torch.Tensor | slice
    image_rows: torch.Tensor | slice
    groups: list[Group]
    n_text: int
    n_image: int
    batch: int
    length: int

    @classmethod
    def build(cls, is_image: torch.Tensor, mot: bool = True) -> Routing:
        B, L = is_image.shape
        flat = is_image.reshape(-1)
        N, n_img = flat.numel(), int(flat.sum())
        n_txt = N - n_img
        if not mot or n_img == 0 or n_txt == 0:
            only_image = n_txt == 0
            mode = "image" if only_image else ("mixed" if n_img else "none")
            expert = 1 if (mot and only_image) else 0
            text_rows = (
                slice(0, N) if n_img == 0 else (slice(0, 0) if only_image else flat.logical_not().nonzero().squeeze(1))
            )
            image_rows = slice(0, N) if only_image else (slice(0, 0) if n_img == 0 else flat.nonzero().squeeze(1))
            return cls(None, None, text_rows, image_rows, [Group(slice(0, N), expert, mode)], n_txt, n_img, B, L)
        perm = torch.argsort(flat.to(torch.int8), stable=True)  # text (0) first, order kept inside a group
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(N, device=perm.device)
        groups = [Group(slice(0, n_txt), 0, "none"), Group(slice(n_txt, N), 1, "image")]
        return cls(perm, inv, slice(0, n_txt), slice(n_txt, N), groups, n_txt, n_img, B, L)

    def group(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, ...] -> [N, ...] in stream order."""
        x = x.reshape(self.batch * self.length, *x.shape[2:])
        return x if self.perm is None else _Permute.apply(x, self.perm, self.inv)

    def ungroup(self, x: torch.Tensor) -> torch.Tensor:
        """[N, ...] stream order -> [B, L, ...] sequence order."""
        x = x if self.inv is None else _Permute.apply(x, self.inv, self.perm)
        return x.reshape(self.batch, self.length, *x.shape[1:])

    def rows_of(self, seq_idx: torch.Tensor) -> torch.Tensor:
        """Stream rows of flat sequence indices."""
        return seq_idx if self.inv is None else self.inv[seq_idx]


class Expert(nn.Module):
    """One modality's weights in one layer."""

    def __init__(self, width: int, head_dim: int, hidden: int, qk_norm: bool):
        super().__init__()
        self.norm1 = RMSNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.o = nn.Linear(width, width, bias=False)
        self.norm2 = RMSNorm(width)
        self.mlp = SwiGLU(width, hidden)


def _modulate(x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor | None) -> torch.Tensor:
    return x if shift is None else x * (1 + scale) + shift


class MoTBlock(nn.Module):
    def __init__(self, width: int, n_heads: int, head_dim: int, hidden: int, qk_norm: bool, mot: bool, adaln: bool):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.experts = nn.ModuleList([Expert(width, head_dim, hidden, qk_norm) for _ in range(2 if mot else 1)])
        # adaLN for image tokens: 6 vectors (shift, scale, gate) x (attention, MLP) from the time embedding
        self.image_mod = nn.Linear(width, 6 * width) if adaln else None
        if self.image_mod is not None:
            nn.init.zeros_(self.image_mod.weight)
            nn.init.zeros_(self.image_mod.bias)

    def _mods(self, temb: ImageTimes | None, route: Routing, n: int) -> dict[str, Modulation]:
        """Per modulation mode, the adaLN vectors for its group's rows (no entry: an unmodulated group)."""
        if self.image_mod is None or temb is None or route.n_image == 0:
            return {}
        img = temb.per_row(self.image_mod(temb.emb))  # [U, 6 D] -> [N_image, 6 D]
        out = {}
        for group in route.groups:
            if group.modulation == "image":
                out["image"] = Modulation(*img.chunk(6, dim=-1))
            elif group.modulation == "mixed":  # dense: text rows get zeros, i.e. the identity modulation
                full = img.new_zeros(n, img.shape[-1])
                full[route.image_rows] = img
                out["mixed"] = Modulation(*full.chunk(6, dim=-1))
        return out

    def forward(
        self,
        h: torch.Tensor,
        route: Routing,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: AttentionMask,
        temb: ImageTimes | None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """h [N, D] in stream order; rope cos/sin [B, L, Dh/2]; temb: the image rows' time embedding; kv: cache
        buffers [B, H, Lk, Dh] whose last L slots receive this forward's keys and values."""
        N, D = h.shape
        H, Dh = self.n_heads, self.head_dim
        mods = self._mods(temb, route, N)
        parts = [
            (g.rows, self.experts[min(g.expert, len(self.experts) - 1)], mods.get(g.modulation)) for g in route.groups
        ]

        # attention sublayer (per-expert norm, QKV, QK-norm), then one global attention in sequence order
        qkv = []
        for sl, e, m in parts:
            x = e.norm1(h[sl])
            if m is not None:
                x = _modulate(x, m.attn_shift, m.attn_scale)
            q, k, v = e.qkv(x).view(-1, 3, H, Dh).unbind(1)
            qkv.append(torch.stack([e.q_norm(q), e.k_norm(k), v], dim=1))
        qkv = qkv[0] if len(qkv) == 1 else torch.cat(qkv)  # [N, 3, H, Dh]
        q, k, v = route.ungroup(qkv).permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, Dh]
        cos, sin = rope  # each [B, L, Dh/2]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:  # write this forward's keys/values into the cache slots, attend over all of it
            L = q.shape[2]
            k_cache, v_cache = kv
            k_cache[:, :, -L:] = k
            v_cache[:, :, -L:] = v
            k, v = k_cache, v_cache
        o = mask.attend(q, k, v)  # [B, H, L, Dh]
        o = route.group(o.transpose(1, 2).reshape(route.batch, route.length, D))
        outs = []
        for sl, e, m in parts:
            y = e.o(o[sl])
            outs.append(y * (1 + m.attn_gate) if m is not None else y)
        h = h + (outs[0] if len(outs) == 1 else torch.cat(outs))

        # feed-forward sublayer, per expert
        outs = []
        for sl, e, m in parts:
            x = e.norm2(h[sl])
            if m is not None:
                x = _modulate(x, m.mlp_shift, m.mlp_scale)
            y = e.mlp(x)
            outs.append(y * (1 + m.mlp_gate) if m is not None else y)
        return h + (outs[0] if len(outs) == 1 else torch.cat(outs))
