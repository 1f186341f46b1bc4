"""Inductive Moment Matching (Zhou, Ermon, Song, ICML 2025): the equations, independent of any network.

The interpolant, c_in and the flow map f(x_t, t, s) = x_t - (t - s) sigma_d G(c_in(t) x_t, t, s) are in
`mmgen/flowmap.py`. Training: groups of M particles share (s, r, t); y_t = f(x_t, t, s), y_r = f_sg(x_r, r, s)
with x_r the DDIM step of x_t towards the same x; loss = mean over groups of lambda(t) MMD^2({y_t}, {y_r}) with
a Laplace kernel on whole images. `imm_loss` applies it to a network on flat tensors (the 2-D studies, tests);
the packed multimodal batch uses the same pieces in `mmgen/objectives/multimodal.py`.
"""

from __future__ import annotations

import torch

from mmgen.config import ImmConfig
from mmgen.flowmap import (
    Net,
    alpha_sigma,
    apply_flow_map,
    ddim,
    flow_map,
    interpolate,
    network_input,
    velocity_target,
)


# ---------------------------------------------------------------------------------------------- times
def eta(t: torch.Tensor) -> torch.Tensor:
    """eta = sigma / alpha = t / (1 - t)."""
    return t / (1.0 - t)


def eta_inv(e: torch.Tensor) -> torch.Tensor:
    return e / (1.0 + e)


def r_from_ts(t: torch.Tensor, s: torch.Tensor, cfg: ImmConfig) -> torch.Tensor:
    """r = max(s, min(t - gap, eta^-1(eta(t) - (eta(T) - eta(eps)) / 2^k))): a constant decrement in eta
    (imm.r_mapping = eta); imm.r_mapping = midpoint: r = max(s, min(t - gap, (t + s) / 2))."""
    if cfg.r_mapping == "midpoint":
        return torch.maximum(s, torch.minimum(t - cfg.min_gap, (t + s) / 2))
    step = eta(torch.tensor(cfg.t_max, dtype=torch.float64)) - eta(torch.tensor(cfg.t_min, dtype=torch.float64))
    step = float(step) / 2**cfg.k
    r = eta_inv((eta(t.double()) - step).clamp_min(0.0)).to(t.dtype)
    return torch.maximum(s, torch.minimum(t - cfg.min_gap, r))


def sample_times(
    n_groups: int, cfg: ImmConfig, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group: t ~ U(eps, T), s ~ U(eps, t), r from the mapping. Returns (t, s, r), each [n_groups] fp32.
    t and s are kept `min_gap` apart (t from eps + gap, s below t - gap) so that s <= r <= t - gap always."""
    u = torch.rand(2, n_groups, generator=generator, dtype=torch.float64).to(device)
    gap = cfg.min_gap
    t = cfg.t_min + gap + (cfg.t_max - cfg.t_min - gap) * u[0]
    s = cfg.t_min + (t - gap - cfg.t_min) * u[1]
    t, s = t.float(), s.float()
    return t, s, r_from_ts(t, s, cfg)


# ----------------------------------------------------------------------------------------- the loss
def weighting(t: torch.Tensor, cfg: ImmConfig) -> torch.Tensor:
    """lambda(t) = 0.5 sigmoid(b - logSNR) (-dlogSNR/dt) alpha^a / (alpha^2 + sigma^2), logSNR = 2 log((1-t)/t)."""
    t = t.double().clamp(1e-6, 1 - 1e-6)
    a, s = alpha_sigma(t)
    logsnr = 2.0 * torch.log(a / s)
    dlogsnr = 2.0 / (t * (1.0 - t))  # -d logSNR / dt
    return (0.5 * torch.sigmoid(cfg.b - logsnr) * dlogsnr * a**cfg.a / (a * a + s * s)).float()


def boundary_weight(t: torch.Tensor, cfg: ImmConfig) -> torch.Tensor:
    """Weight of a boundary group's flow-matching loss: imm.boundary_weight, times lambda(t) with
    imm.boundary_weighting = lambda. t [G] -> [G]."""
    w = torch.full_like(t, cfg.boundary_weight, dtype=torch.float32)
    return w * weighting(t, cfg).to(w.device) if cfg.boundary_weighting == "lambda" else w


def kernel_weight(t: torch.Tensor, s: torch.Tensor, cfg: ImmConfig) -> torch.Tensor:
    """w(s, t) = 1 / |c_out(s, t)| = 1 / ((t - s) sigma_d), clamped."""
    return (1.0 / ((t - s).clamp_min(1e-12) * cfg.sigma_d)).clamp_max(cfg.kernel_weight_max)


def laplace_mmd2(
    y_t: torch.Tensor, y_r: torch.Tensor, w: torch.Tensor, estimator: str = "v", norm: str = "dim"
) -> torch.Tensor:
    """Group MMD^2 with k(a, b) = exp(-w ||a - b||_2 / D) on whole particles (norm "dim", the paper's; "sqrt_dim":
    / sqrt(D), an exponent of the same size at any D: distances between particles grow like sqrt(D)).

    y_t, y_r: [G, M, D] (each particle flattened: all latent tokens of one image); w: [G]. Returns [G]:
    "v": mean_ij k(y_t^i, y_t^j) + mean_ij k(y_r^i, y_r^j) - 2 mean_ij k(y_t^i, y_r^j)   (the paper's, all i, j);
    "u": the U-statistic over pairs i != j (Gretton et al. 2012, MMD^2_u):
    mean_{i!=j} [k(y_t^i, y_t^j) + k(y_r^i, y_r^j) - k(y_t^i, y_r^j) - k(y_t^j, y_r^i)].
    "no_self": the self-pairs alone left out: mean_{i!=j} k(y_t^i, y_t^j) + mean_{i!=j} k(y_r^i, y_r^j)
    - 2 mean_ij k(y_t^i, y_r^j) (every cross pair kept, the paired ones included).
    The first form sums M^2 pairs, of which the M self-pairs k(y, y) = 1 carry no gradient: for independent
    particles its expectation exceeds MMD^2 by (2 - E k(y_t, y_t') - E k(y_r, y_r')) / M, smaller the more the
    particles cluster. In IMM y_t^i and y_r^i share their (x, noise), so its cross diagonal k(y_t^i, y_r^i) is
    a paired attraction as well, which the i != j form drops too. Measured, the unbiased form does not sharpen
    1-step samples (docs/inference_first.md); the paper's is the default. A group of one: 0.
    """
    D = y_t.shape[-1]
    if norm not in ("dim", "sqrt_dim"):
        raise ValueError(f"unknown kernel norm {norm!r}: dim or sqrt_dim")
    scale = float(D) if norm == "dim" else float(D) ** 0.5
    z = torch.cat([y_t, y_r], dim=1)  # [G, 2M, D]
    sq = (z.unsqueeze(2) - z.unsqueeze(1)).pow(2).sum(-1)  # [G, 2M, 2M], exact (no Gram-matrix cancellation)
    dist = sq.clamp_min(1e-16).sqrt()  # distance clamped at 1e-8; no gradient through the clamp at 0
    k = torch.exp(-w[:, None, None] * dist / scale)
    M = y_t.shape[1]
    if estimator == "v":
        return k[:, :M, :M].mean((1, 2)) + k[:, M:, M:].mean((1, 2)) - 2 * k[:, :M, M:].mean((1, 2))
    pairs = 1.0 - torch.eye(M, dtype=k.dtype, device=k.device)  # i != j
    n = max(M * (M - 1), 1)
    if estimator == "no_self":
        own = ((k[:, :M, :M] + k[:, M:, M:]) * pairs).sum((1, 2)) / n
        return own - 2 * k[:, :M, M:].mean((1, 2))
    if estimator != "u":
        raise ValueError(f"unknown MMD estimator {estimator!r}: v, u or no_self")
    h = k[:, :M, :M] + k[:, M:, M:] - k[:, :M, M:] - k[:, M:, :M]
    return (h * pairs).sum((1, 2)) / n


def group_loss(y_t: torch.Tensor, y_r: torch.Tensor, t: torch.Tensor, s: torch.Tensor, cfg: ImmConfig) -> torch.Tensor:
    """lambda(t) MMD^2 per group ([G]); y_* [G, M, ...] are flattened per particle, computed in fp32."""
    G, M = y_t.shape[:2]
    w = kernel_weight(t, s, cfg)
    y_t, y_r = y_t.float().reshape(G, M, -1), y_r.float().reshape(G, M, -1)
    mmd = laplace_mmd2(y_t, y_r, w, cfg.mmd, cfg.kernel_norm)
    return weighting(t, cfg) * mmd


def x_r_of(
    net: Net, x_t: torch.Tensor, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cfg: ImmConfig
) -> torch.Tensor:
    """The target branch's input at time r: DDIM(x_t, x, t -> r) with the data x (imm.x_r = ddim, the paper's), or
    the network's own jump f(x_t, t, r) (imm.x_r = model); call without gradient."""
    if cfg.x_r == "model":
        return apply_flow_map(net, x_t, t, r, cfg.sigma_d)
    return ddim(x_t, x, t, r)


def imm_loss(
    net: Net, x: torch.Tensor, cfg: ImmConfig, generator: torch.Generator | None = None, step: int = 0
) -> tuple[torch.Tensor, dict[str, float]]:
    """IMM on flat data x [B, ...] with B = groups x M (consecutive rows form a group). Returns the mean over
    groups and a few statistics. theta- (the y_r branch) is the same network without gradient.

    With `imm.boundary_fraction` (or during `imm.warm_start_steps`) a group is trained at its boundary s = t
    with the flow-matching loss instead, weighted by `imm.boundary_weight`, as the packed objective does."""
    M = cfg.particles
    B = x.shape[0]
    if B % M:
        raise ValueError(f"batch size {B} is not a multiple of imm.particles={M}")
    G = B // M
    t, s, r = sample_times(G, cfg, generator, x.device)
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * cfg.sigma_d
    fraction = 1.0 if step < cfg.warm_start_steps else cfg.boundary_fraction
    on_boundary = torch.zeros(G, dtype=torch.bool, device=x.device)
    if fraction > 0:  # no draw at fraction 0, so the paper's IMM keeps its exact random stream
        on_boundary = (torch.rand(G, generator=generator) < fraction).to(x.device)
        s, r = torch.where(on_boundary, t, s), torch.where(on_boundary, t, r)
    t, s, r = (v.repeat_interleave(M) for v in (t, s, r))
    x_t = interpolate(x, eps, t)
    g_t = net(network_input(x_t, t, cfg.sigma_d), t, s)
    per_group = x.new_zeros(G, dtype=torch.float32)
    if bool(on_boundary.any()):  # d f(x_t, t, s) / ds at s = t is the velocity: flow matching on G
        fm = (g_t.float() - velocity_target(x, eps, cfg.sigma_d).float()).pow(2).reshape(G, M, -1).mean((1, 2))
        per_group = torch.where(on_boundary, boundary_weight(t[::M], cfg) * fm, per_group)
    mmd = ~on_boundary
    if bool(mmd.any()):
        rows = mmd.repeat_interleave(M)
        y_t = flow_map(x_t[rows], t[rows], s[rows], g_t[rows], cfg.sigma_d)
        with torch.no_grad():
            x_r = x_r_of(net, x_t[rows], x[rows], t[rows], r[rows], cfg)
            y_r = apply_flow_map(net, x_r, r[rows], s[rows], cfg.sigma_d)
        n = int(mmd.sum())
        per_group[mmd] = group_loss(y_t.view(n, M, -1), y_r.view(n, M, -1), t[rows][::M], s[rows][::M], cfg)
    return per_group.mean(), {"imm": float(per_group.detach().mean()), "t_mean": float(t.mean())}
