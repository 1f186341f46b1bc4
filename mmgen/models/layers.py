"""Building blocks: norms, SwiGLU, flow-map time embedding, multimodal rotary positions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.RMSNorm):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps=eps, elementwise_affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the weight in x's dtype: under bf16 autocast x is bf16 and the fp32 weight would send torch.rms_norm
        # to its unfused path (several kernels and an fp32 copy of x); the fused kernel accumulates in fp32
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


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


TIME_INPUTS = ("s", "stride", "both")


class TimeEmbedding(nn.Module):
    """Flow-map times (t, s) -> [N, dim]: sinusoidal features of 1000 t through one MLP, plus the second time
    through its own MLP, summed. The second time is `time_input`:

    - "s": the target time s itself (the IMM paper's "identity" embedding, used for CIFAR-10 and every TF32
      run; the default). Measured on the 2-D targets it gives a far better 1-step map than the stride.
    - "stride": t - s (the paper's FP16 ImageNet option; it keeps t and s apart when t - s is below the
      resolution of a low-precision t). Releases made before this option existed were trained with it.
    - "both": s and t - s, each through its own MLP.

    The parameter names say which input an MLP reads (`s_mlp`, `d_mlp`), so a checkpoint of one variant never
    loads silently into another. Runs in fp32 (callers keep it out of autocast)."""

    def __init__(self, dim: int, freq_dim: int = 256, scale: float = 1000.0, time_input: str = "s"):
        super().__init__()
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input must be one of {', '.join(TIME_INPUTS)}, got {time_input!r}")
        self.freq_dim = freq_dim
        self.scale = scale
        self.time_input = time_input
        self.t_mlp = self._mlp(dim)
        if time_input in ("s", "both"):
            self.s_mlp = self._mlp(dim)
        if time_input in ("stride", "both"):
            self.d_mlp = self._mlp(dim)

    def _mlp(self, dim: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(self.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def _embed(self, mlp: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        # fp32 features into the MLP's own dtype: fp32 weights (plain and autocast runs) keep the whole path
        # in fp32; DeepSpeed's bf16 mode stores every parameter in bf16, so there the MLP runs in bf16
        feats = sinusoidal(self.scale * x, self.freq_dim)
        return mlp(feats.to(mlp[0].weight.dtype)).float()

    def forward(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        with torch.autocast(t.device.type, enabled=False):
            t, s = t.float(), s.float()
            out = self._embed(self.t_mlp, t)
            if self.time_input in ("s", "both"):
                out = out + self._embed(self.s_mlp, s)
            if self.time_input in ("stride", "both"):
                out = out + self._embed(self.d_mlp, t - s)
            return out


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
