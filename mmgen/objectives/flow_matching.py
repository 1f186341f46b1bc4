"""Flow matching on the same interpolant as IMM: the one-time baseline.

x_t = (1 - t) x + t eps, eps ~ N(0, sigma_d^2 I); the velocity dx_t/dt = eps - x is predicted as sigma_d G.
The network is the same two-time network as the flow map, called with s = t (stride 0): an Euler step from
t to s is then exactly the flow-map formula f(x_t, t, s) = x_t - (t - s) sigma_d G(x_t, t, t), so the
samplers and the backbone are shared and only the training signal differs.
"""

from __future__ import annotations

import torch

from mmgen.config import FlowMatchingConfig
from mmgen.flowmap import Net, interpolate, network_input, velocity_target


def sample_t(
    n: int, cfg: FlowMatchingConfig, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    if cfg.time_sampling == "logit_normal":  # SD3's choice: more weight on the middle of the path
        u = torch.sigmoid(torch.randn(n, generator=generator))
    else:
        u = torch.rand(n, generator=generator)
    return (cfg.t_min + (cfg.t_max - cfg.t_min) * u).to(device)


def fm_loss(
    net: Net, x: torch.Tensor, cfg: FlowMatchingConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean squared error of G(c_in(t) x_t, t, t) against (eps - x) / sigma_d, on flat data x [B, ...]."""
    t = sample_t(x.shape[0], cfg, generator, x.device)
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * cfg.sigma_d
    x_t = interpolate(x, eps, t)
    g = net(network_input(x_t, t, cfg.sigma_d), t, t)
    loss = (g.float() - velocity_target(x, eps, cfg.sigma_d).float()).pow(2).mean()
    return loss, {"fm": float(loss.detach())}
