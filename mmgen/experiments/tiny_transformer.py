"""A small pre-norm transformer over short token tuples: causal for the autoregressive model, bidirectional
for the masked-diffusion model, with the same weights' shapes either way (only the attention mask differs).

Input ids [B, N] index one embedding table of `vocab_in` entries (data tokens, then [MASK] and [BOS]); the
head predicts the `vocab_out` data tokens only, so [MASK] is never a possible output. Positions are learned
absolute embeddings: with relative (rotary) positions an all-[MASK] input would give every position the same
output, and a one-step masked sampler could not tell the first word from the second.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmgen.models.layers import RMSNorm, SwiGLU, mlp_hidden


class Block(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.norm1, self.norm2 = RMSNorm(width), RMSNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.mlp = SwiGLU(width, mlp_hidden(width, 4.0))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, N, W = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(B, N, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # [B, heads, N, W / heads]
        h = h + self.proj(a.transpose(1, 2).reshape(B, N, W))
        return h + self.mlp(self.norm2(h))


class TinyTransformer(nn.Module):
    """ids [B, N] (N <= max_len) -> logits [B, N, vocab_out]."""

    def __init__(
        self,
        vocab_in: int,
        vocab_out: int,
        max_len: int,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        causal: bool = False,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        if vocab_out > vocab_in:
            raise ValueError(f"vocab_out {vocab_out} cannot exceed vocab_in {vocab_in}")
        self.causal = causal
        self.embed = nn.Embedding(vocab_in, width)
        self.pos = nn.Parameter(0.02 * torch.randn(max_len, width))
        self.blocks = nn.ModuleList(Block(width, heads, causal) for _ in range(depth))
        self.norm = RMSNorm(width)
        self.head = nn.Linear(width, vocab_out, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))
