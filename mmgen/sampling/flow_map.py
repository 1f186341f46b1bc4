"""Few-step samplers for flow maps (IMM) and one-time models (flow matching), as pure functions.

`g(x_in, t, s)` is any callable returning G for the preconditioned input x_in = c_in(t) x_t (a flat network,
or the backbone with a cached prefix and batched CFG, see `mmgen/sampling/interleaved.py`); the parametrisation
(c_in, f, the interpolant) is `mmgen/flowmap.py`'s.

    pushforward: x_{t_{i-1}} = f(x_{t_i}, t_i, t_{i-1})                     (IMM; N = 1, 2, 4, 8 steps)
    euler:       x_{t_{i-1}} = x_{t_i} - (t_i - t_{i-1}) sigma_d G(x_{t_i}, t_i, t_i)   (flow matching)
    restart:     x_0 = f(x_{t_i}, t_i, 0), then re-noise x_0 to t_{i-1} with fresh noise
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from mmgen.config.schema import TIME_GRID, TIME_GRIDS
from mmgen.flowmap import apply_flow_map, default_time_range, interpolate

G = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


IMM_T_MIN, IMM_T_MAX = default_time_range("imm")


def time_grid(steps: int, t_max: float = IMM_T_MAX, t_min: float = IMM_T_MIN, kind: str = TIME_GRID) -> torch.Tensor:
    """Descending times t_N = t_max > ... > t_0 = t_min ([steps + 1], fp32). `cosine` spends more steps
    near the data end; `uniform` is the IMM default. A model's own range is its config's t_max and t_min."""
    if steps <= 0:
        raise ValueError(f"the number of sampling steps must be >= 1, got {steps}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if kind == "cosine":
        u = 1.0 - torch.cos(u * torch.pi / 2)
    elif kind not in TIME_GRIDS:
        raise ValueError(f"unknown time grid {kind!r}: {' or '.join(TIME_GRIDS)}")
    return (t_min + (t_max - t_min) * u).float()


def _step(g: G, x: torch.Tensor, t: float, s: float, sigma_d: float, two_time: bool) -> torch.Tensor:
    n = x.shape[0]
    tt = torch.full((n,), t, device=x.device, dtype=torch.float32)
    ss = torch.full((n,), s, device=x.device, dtype=torch.float32)
    return apply_flow_map(g, x, tt, ss, sigma_d, one_time=not two_time)


@torch.no_grad()
def sample(
    g: G,
    noise: torch.Tensor,
    times: torch.Tensor,
    sigma_d: float,
    method: Literal["pushforward", "euler", "restart"] = "pushforward",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integrate from x_{t_N} = noise (already scaled by sigma_d) down the time grid; returns x_{t_0}."""
    x = noise
    ts = times.tolist()
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        if method == "pushforward":
            x = _step(g, x, t, s, sigma_d, two_time=True)
        elif method == "euler":
            x = _step(g, x, t, s, sigma_d, two_time=False)
        elif method == "restart":
            x0 = _step(g, x, t, 0.0, sigma_d, two_time=True)
            if s > 0:
                eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * sigma_d
                x = interpolate(x0, eps, torch.full((x.shape[0],), s, device=x.device))
            else:
                x = x0
        else:
            raise ValueError(f"unknown sampler {method!r}: pushforward, euler or restart")
    return x


def cfg_combine(g_cond: torch.Tensor, g_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance on G: G_w = G_uncond + w (G_cond - G_uncond)."""
    return g_uncond + w * (g_cond - g_uncond)
