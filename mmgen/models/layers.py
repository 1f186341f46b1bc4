"""Building blocks: norms, SwiGLU, flow-map time embedding, multimodal rotary positions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.RMSNorm):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps=eps, elementwise_affine=True)


def mlp_hidden(width: int, ratio: float, multiple: int = 32) -> int:
    """SwiGLU hidden size: ratio * 2/3 * width (same parameters as a GELU MLP of `ratio`), rounded up."""
    h = int(ratio * width * 2 / 3)
    return multiple * math.ceil(h / multiple)


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.w13 = nn.Linear(width, 2 * hidden, bias=False)  # gate and up, fused
        self.w2 = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


# ------------------------------------------------------------------------------------------ time embedding
def sinusoidal(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N] -> [N, dim] (cos, sin) features at geometric frequencies, computed in fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbedding(nn.Module):
    """Flow-map times: sinusoidal features of 1000 t and of the stride 1000 (t - s), each through its own MLP,
    summed. The stride input keeps t and s distinguishable when t - s is below bf16 resolution of t.
    Runs in fp32 (callers keep it out of autocast)."""

    def __init__(self, dim: int, freq_dim: int = 256, scale: float = 1000.0):
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.t_mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.d_mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        with torch.autocast(t.device.type, enabled=False):
            ft = sinusoidal(self.scale * t.float(), self.freq_dim)
            fd = sinusoidal(self.scale * (t.float() - s.float()), self.freq_dim)
            return self.t_mlp(ft) + self.d_mlp(fd)


# ------------------------------------------------------------------------------------------------- RoPE
def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rope_axis(head_dim: int) -> torch.Tensor:
    """Which position component (0 = t, 1 = h, 2 = w) drives each rotary frequency: interleaved, so every
    axis spans the whole frequency range (fine detail on small latent grids, long range for text)."""
    return torch.arange(head_dim // 2) % 3


def rope_cos_sin(pos: torch.Tensor, inv_freq: torch.Tensor, axis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pos [3, ...] (t, h, w) -> cos, sin [..., head_dim/2]. Text has t = h = w, which is plain 1-D RoPE."""
    p = pos.float()
    # angle[..., i] = pos[axis[i]] * inv_freq[i]
    chosen = p.movedim(0, -1)[..., axis.to(pos.device)]  # [..., head_dim/2]
    ang = chosen * inv_freq.to(pos.device)
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., L, head_dim] rotated pairwise (first half, second half); cos/sin broadcast to [..., L, head_dim/2]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)
