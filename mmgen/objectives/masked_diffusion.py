"""Masked discrete diffusion (MD4: Shi et al. 2024, "Simplified and Generalized Masked Diffusion for
Discrete Data"), on token tensors and independent of any network.

    forward:  z_t keeps each token of x with probability alpha_t = 1 - t, else it becomes [MASK]
    loss:     E_t [ -alpha'_t / (1 - alpha_t) * sum_{n masked} -log p(x_n | z_t) ],  weight = 1 / t
    sampler:  on a grid 1 = t_L > ... > t_0 = 0, every still-masked position unmasks with probability
              (alpha_s - alpha_t) / (1 - alpha_t) = (t - s) / t and draws its token from its own categorical;
              at s = 0 that probability is 1, so the last step fills whatever is left.

A network is any callable `net(z [B, N] long) -> logits [B, N, V]` over the V data tokens: [MASK] has an input
id >= V and no output logit. Positions are predicted independently given z_t, so one step from all-[MASK]
samples the product of the per-position marginals whatever the training (`mmgen/experiments/md_exact.py`
computes every sampler's output distribution exactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

TokenNet = Callable[[torch.Tensor], torch.Tensor]  # z [B, N] -> logits [B, N, V]
Grid = Literal["cosine", "uniform"]
Unmask = Literal["random", "count"]


@dataclass
class MaskedDiffusionConfig:
    mask_id: int  # input id of [MASK]; must not be a data token (>= V, the logits' size)
    t_min: float = 1e-3  # t ~ U(t_min, 1): bounds the 1/t weight
    stratified: bool = True  # one t per sequence on a shifted regular grid (MD4's low-discrepancy sampler)

    def __post_init__(self) -> None:
        if self.mask_id < 0:
            raise ValueError(f"mask_id must be >= 0, got {self.mask_id}")
        if not 0.0 < self.t_min < 1.0:
            raise ValueError(f"t_min must lie in (0, 1), got {self.t_min}")


def alpha(t: torch.Tensor) -> torch.Tensor:
    """Linear schedule alpha_t = 1 - t (probability that a token is still visible at time t)."""
    return 1.0 - t


def sample_t(n: int, cfg: MaskedDiffusionConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    u = torch.rand(1 if cfg.stratified else n, generator=generator, dtype=torch.float64)
    if cfg.stratified:
        u = (u + torch.arange(n, dtype=torch.float64) / n) % 1.0
    return (cfg.t_min + (1.0 - cfg.t_min) * u).float()


def mask_tokens(
    x: torch.Tensor, t: torch.Tensor, mask_id: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, N], t [B] -> (z_t [B, N], masked [B, N] bool): each token masked independently w.p. 1 - alpha_t."""
    u = torch.rand(x.shape, generator=generator).to(x.device)
    masked = u < (1.0 - alpha(t.to(x.device)))[:, None]
    return torch.where(masked, torch.full_like(x, mask_id), x), masked


def _check_logits(logits: torch.Tensor, z: torch.Tensor, mask_id: int) -> None:
    if logits.shape[:2] != z.shape or logits.dim() != 3:
        raise ValueError(f"the network must return logits [B, N, V] for z {tuple(z.shape)}, got {tuple(logits.shape)}")
    if mask_id < logits.shape[-1]:
        raise ValueError(
            f"mask_id {mask_id} is a data token of the {logits.shape[-1]}-way output: [MASK] "
            f"must have an id >= V and no logit"
        )


def md_loss(
    net: TokenNet, x: torch.Tensor, cfg: MaskedDiffusionConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """MD4 negative ELBO per sequence (nats), averaged over the batch x [B, N].

    loss = mean_b (1 / t_b) sum_{n masked} CE(logits[b, n], x[b, n]); for a perfect denoiser its expectation
    is the data entropy H(x) (every unmasking order is an exact chain rule)."""
    if x.dim() != 2:
        raise ValueError(f"md_loss needs token ids [B, N], got shape {tuple(x.shape)}")
    t = sample_t(x.shape[0], cfg, generator).to(x.device)
    z, masked = mask_tokens(x, t, cfg.mask_id, generator)
    logits = net(z)
    _check_logits(logits, z, cfg.mask_id)
    ce = F.cross_entropy(logits.float().transpose(1, 2), x, reduction="none")  # [B, N]
    weight = 1.0 / t  # -alpha'_t / (1 - alpha_t)
    per_seq = weight * (ce * masked).sum(1)
    loss = per_seq.mean()
    return loss, {"md_nelbo": float(loss.detach()), "masked_frac": float(masked.float().mean())}


# --------------------------------------------------------------------------------------------- sampling
def time_grid(steps: int, kind: Grid = "cosine") -> torch.Tensor:
    """[steps + 1] descending from 1 to 0. cosine: t(i) = cos(pi/2 (1 - i/L)), small steps near t = 1, so
    the first (most damaging) steps unmask few tokens; uniform: t(i) = i / L."""
    if steps < 1:
        raise ValueError(f"the number of unmasking steps must be >= 1, got {steps}")
    i = torch.arange(steps, -1, -1, dtype=torch.float64) / steps
    if kind == "cosine":
        t = torch.cos(math.pi / 2 * (1.0 - i))
        t[-1] = 0.0  # cos(pi/2) is 6e-17, not 0
    elif kind == "uniform":
        t = i
    else:
        raise ValueError(f"unknown masked-diffusion grid {kind!r}: cosine or uniform")
    return t


def unmask_probability(t: float, s: float) -> float:
    """(alpha_s - alpha_t) / (1 - alpha_t): chance that a position masked at t is revealed by s < t."""
    return (t - s) / t


def unmask_counts(length: int, times: torch.Tensor) -> list[int]:
    """`count` variant (MaskGIT-style): reveal exactly round(N t_i) - round(N t_{i-1}) positions at step i,
    the expected number, chosen uniformly among the masked ones. Sums to N."""
    masked = [round(length * float(t)) for t in times]
    return [a - b for a, b in zip(masked[:-1], masked[1:])]


@torch.no_grad()
def sample(
    net: TokenNet,
    n: int,
    length: int,
    steps: int,
    mask_id: int,
    grid: Grid = "cosine",
    unmask: Unmask = "random",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw n sequences [n, length] in `steps` network evaluations, starting from all-[MASK].

    unmask='random' is MD4's sampler (each position independently w.p. (t - s) / t); 'count' reveals a fixed
    number per step. Revealed tokens are never changed again."""
    if unmask not in ("random", "count"):
        raise ValueError(f"unknown unmasking rule {unmask!r}: random or count")
    times = time_grid(steps, grid)
    counts = unmask_counts(length, times)
    z = torch.full((n, length), mask_id, dtype=torch.long, device=device)
    for i in range(steps):
        is_masked = z == mask_id
        if unmask == "random":
            p = unmask_probability(float(times[i]), float(times[i + 1]))
            reveal = is_masked & (torch.rand(z.shape, generator=generator).to(device) < p)
        else:  # the `counts[i]` masked positions with the smallest random keys
            keys = torch.rand(z.shape, generator=generator).to(device).masked_fill(~is_masked, 2.0)
            rank = keys.argsort(dim=1).argsort(dim=1)
            reveal = is_masked & (rank < counts[i])
        if not reveal.any():
            continue  # nothing to reveal: the network call would be wasted
        logits = net(z)
        _check_logits(logits, z, mask_id)
        probs = torch.softmax(logits.float(), dim=-1)  # [n, length, V]
        draw = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(n, length)
        z = torch.where(reveal, draw.to(device), z)
    return z
