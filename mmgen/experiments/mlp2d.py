"""The 2-D network G(x_in, t, s) shared by both models of the continuous study: the one-time model is the
same network always called with s = t (so both have exactly the same parameters and budget)."""

from __future__ import annotations

import torch
from torch import nn

from mmgen.models.layers import TimeEmbedding


class TimeMLP(nn.Module):
    """x_in [n, dim], t [n], s [n] -> [n, dim]. The time embedding (t and the second time, see `TimeEmbedding`)
    is added to the input projection and to every hidden layer."""

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, freq_dim: int = 64, time_input: str = "s"):
        super().__init__()
        self.time = TimeEmbedding(width, freq_dim=freq_dim, time_input=time_input)
        self.inp = nn.Linear(dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.time_proj = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        emb = self.time(t, s)  # [n, width]
        h = nn.functional.silu(self.inp(x) + emb)
        for lin, tp in zip(self.hidden, self.time_proj):
            h = nn.functional.silu(lin(h) + tp(emb))
        return self.out(h)
