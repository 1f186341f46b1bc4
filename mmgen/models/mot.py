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

import torch
from torch import nn

from mmgen.models.attention import AttentionMask
from mmgen.models.layers import RMSNorm, SwiGLU, apply_rope


@dataclass
class Routing:
    """How the [B, L] sequence maps onto the expert-grouped stream [N, D] (N = B * L)."""

    perm: torch.Tensor | None  # [N] sequence index of each grouped position (None: already grouped)
    inv: torch.Tensor | None  # [N] grouped position of each sequence index
    n_text: int
    batch: int
    length: int

    @classmethod
    def build(cls, is_image: torch.Tensor) -> Routing:
        B, L = is_image.shape
        flat = is_image.reshape(-1)
        n_img = int(flat.sum())
        if n_img == 0 or n_img == flat.numel():
            return cls(None, None, flat.numel() - n_img, B, L)
        perm = torch.argsort(flat.to(torch.int8), stable=True)  # text (0) first, order kept inside a group
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.numel(), device=perm.device)
        return cls(perm, inv, flat.numel() - n_img, B, L)

    def group(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, ...] -> [N, ...] in expert-grouped order."""
        x = x.reshape(self.batch * self.length, *x.shape[2:])
        return x if self.perm is None else x[self.perm]

    def ungroup(self, x: torch.Tensor) -> torch.Tensor:
        """[N, ...] grouped -> [B, L, ...] sequence order."""
        x = x if self.inv is None else x[self.inv]
        return x.reshape(self.batch, self.length, *x.shape[1:])


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
        self.n_heads, self.head_dim = n_heads, head_dim
        self.experts = nn.ModuleList([Expert(width, head_dim, hidden, qk_norm) for _ in range(2 if mot else 1)])
        # adaLN for image tokens: 6 vectors (shift, scale, gate) x (attention, MLP) from the time embedding
        self.image_mod = nn.Linear(width, 6 * width) if adaln else None
        if self.image_mod is not None:
            nn.init.zeros_(self.image_mod.weight)
            nn.init.zeros_(self.image_mod.bias)

    def _slices(self, n_text: int, n: int) -> list[tuple[slice, Expert, bool]]:
        image_expert = self.experts[-1]
        return [(sl, e, img) for sl, e, img in ((slice(0, n_text), self.experts[0], False),
                                               (slice(n_text, n), image_expert, True)) if sl.stop > sl.start]  # fmt: skip

    def forward(self, h: torch.Tensor, route: Routing, rope: tuple[torch.Tensor, torch.Tensor],
                mask: AttentionMask, temb: torch.Tensor | None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:  # fmt: skip
        """h [N, D] grouped; rope cos/sin [B, L, Dh/2]; temb [N_image, D] per image token (already SiLU'd);
        kv: cache buffers [B, H, Lk, Dh] whose last L slots receive this forward's keys and values."""
        N, D = h.shape
        H, Dh = self.n_heads, self.head_dim
        mods = None
        if self.image_mod is not None and temb is not None and route.n_text < N:
            mods = self.image_mod(temb).chunk(6, dim=-1)  # each [N_image, D]
        parts = self._slices(route.n_text, N)

        # attention sublayer (per-expert norm, QKV, QK-norm), then one global attention in sequence order
        qkv = h.new_empty(N, 3, H, Dh)
        for sl, e, img in parts:
            x = e.norm1(h[sl])
            if img and mods is not None:
                x = _modulate(x, mods[0], mods[1])
            q, k, v = e.qkv(x).view(-1, 3, H, Dh).unbind(1)
            qkv[sl, 0], qkv[sl, 1], qkv[sl, 2] = e.q_norm(q), e.k_norm(k), v
        q, k, v = route.ungroup(qkv).permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, Dh]
        cos, sin = rope[0].unsqueeze(1), rope[1].unsqueeze(1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:  # write this forward's keys/values into the cache slots, attend over all of it
            L = q.shape[2]
            kv[0][:, :, -L:], kv[1][:, :, -L:] = k, v
            k, v = kv
        o = mask.attend(q, k, v)  # [B, H, L, Dh]
        o = route.group(o.transpose(1, 2).reshape(route.batch, route.length, D))
        out = h.new_empty(N, D)
        for sl, e, img in parts:
            y = e.o(o[sl])
            out[sl] = y * (1 + mods[2]) if img and mods is not None else y
        h = h + out

        # feed-forward sublayer, per expert
        out = h.new_empty(N, D)
        for sl, e, img in parts:
            x = e.norm2(h[sl])
            if img and mods is not None:
                x = _modulate(x, mods[3], mods[4])
            y = e.mlp(x)
            out[sl] = y * (1 + mods[5]) if img and mods is not None else y
        return h + out
