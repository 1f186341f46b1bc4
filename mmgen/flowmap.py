"""The flow-map parametrisation, in one place: interpolant, preconditioning, flow map and time range.

The objectives (`mmgen/objectives/`), the samplers (`mmgen/sampling/flow_map.py`, `interleaved.py`) and the
evaluations call these and never re-derive them (IMM.md, "Interpolant and flow map"):

    interpolant  x_t = alpha_t x + sigma_t eps,  alpha_t = 1 - t, sigma_t = t,  eps ~ N(0, sigma_d^2 I)
    DDIM         DDIM(x_t, x, t -> r) = alpha_r x + (sigma_r / sigma_t) (x_t - alpha_t x)
    input        c_in(t) x_t,  c_in(t) = 1 / (sigma_d sqrt(alpha_t^2 + sigma_t^2))   (c_in(0) = 1 / sigma_d)
    flow map     f(x_t, t, s) = x_t - (t - s) sigma_d G(c_in(t) x_t, t, s)            ("Euler-FM")
    velocity     sigma_d G = eps - x: the target of G at s = t (flow matching, IMM's boundary groups)

A flow-matching model is the same network called with s = t; an Euler step to s is then the same formula.
The time range a model trains on (`time_range`) is stored in its config (`MMGenConfig.t_min / t_max`), so a
release samples between the times it was trained on. Depends on `mmgen.config` and torch only, so every layer
above the configs (models, objectives, sampling) may import it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmgen.config import FlowMatchingConfig, ImmConfig, ObjectiveConfig

# G(c_in(t) x_t, t, s) -> same shape as x_t; t, s broadcast against x_t's leading dimension
Net = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def expand_as(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1, ..., 1] to broadcast against x [N, ...]."""
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


# ---------------------------------------------------------------------------------------- interpolant
def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return 1.0 - t, t


def interpolate(x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = alpha_t x + sigma_t eps (t broadcast over x)."""
    a, s = alpha_sigma(expand_as(t, x))
    return a * x + s * eps


def ddim(x_t: torch.Tensor, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """DDIM(x_t, x, t -> r) = alpha_r x + (sigma_r / sigma_t) (x_t - alpha_t x)."""
    a_t, s_t = alpha_sigma(expand_as(t, x))
    a_r, s_r = alpha_sigma(expand_as(r, x))
    return a_r * x + (s_r / s_t.clamp_min(1e-12)) * (x_t - a_t * x)


def velocity_target(x: torch.Tensor, eps: torch.Tensor, sigma_d: float) -> torch.Tensor:
    """Target for G at s = t: (eps - x) / sigma_d, so that sigma_d G is the velocity dx_t/dt."""
    return (eps - x) / sigma_d


# ------------------------------------------------------------------------------------ preconditioning
def c_in(t: torch.Tensor, sigma_d: float) -> torch.Tensor:
    a, s = alpha_sigma(t)
    return 1.0 / (sigma_d * torch.sqrt(a * a + s * s))


def network_input(x_t: torch.Tensor, t: torch.Tensor, sigma_d: float) -> torch.Tensor:
    """c_in(t) x_t: what the network reads for a noisy image (x_t [N, ...], t [N])."""
    return expand_as(c_in(t, sigma_d), x_t) * x_t


def clean_input(x0: torch.Tensor, sigma_d: float) -> torch.Tensor:
    """c_in(0) x0 = x0 / sigma_d: what the network reads for a clean image (context, t = s = 0)."""
    return x0 / sigma_d


# ------------------------------------------------------------------------------------------- flow map
def flow_map(x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, g: torch.Tensor, sigma_d: float) -> torch.Tensor:
    """f(x_t, t, s) = x_t - (t - s) sigma_d G. f(x, t, t) = x by construction."""
    return x_t - expand_as(t - s, x_t) * sigma_d * g


def apply_flow_map(
    net: Net, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, sigma_d: float, one_time: bool = False
) -> torch.Tensor:
    """f_theta(x_t, t, s) for a network G (x_t [N, ...], t and s [N]); G runs in x_t's dtype. `one_time`: G is
    evaluated at s = t (a flow-matching model's velocity), which makes the jump to s an Euler step."""
    g = net(network_input(x_t, t, sigma_d).to(x_t.dtype), t, t if one_time else s)
    return flow_map(x_t, t, s, g.to(x_t.dtype), sigma_d)


# ----------------------------------------------------------------------------------------- time range
def image_config(objective: ObjectiveConfig) -> ImmConfig | FlowMatchingConfig:
    """The image objective's own config, which holds its sigma_d and time range."""
    return objective.imm if objective.image == "imm" else objective.fm


def time_range(objective: ObjectiveConfig) -> tuple[float, float]:
    """(t_min, t_max): the times the image objective trains on, and so the times its model samples between."""
    c = image_config(objective)
    return c.t_min, c.t_max


def default_time_range(image_objective: str) -> tuple[float, float]:
    """(t_min, t_max) of an objective at its defaults: IMM's T = 0.994 (the paper's), flow matching's 1; t_min 0.
    What a model config written before the range was stored (config.json without t_min / t_max) trained on."""
    return time_range(ObjectiveConfig(image=image_objective))  # type: ignore[arg-type]
