"""Sample-based distances between 2-D (or any flat) point sets: energy distance and sliced Wasserstein.

Both compare a generated set x [n, d] with fresh target samples y [m, d]. Report them beside the same metric
between two independent target sets (the sampling-noise floor): a model cannot score below it.
"""

from __future__ import annotations

import torch


def _mean_dist(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """mean_ij ||a_i - b_j||_2 in fp64, chunked so that 10k x 10k sets fit in memory."""
    a, b = a.double(), b.double()
    total = torch.zeros((), dtype=torch.float64)
    for i in range(0, a.shape[0], chunk):
        total += torch.cdist(a[i : i + chunk], b).sum()
    return total / (a.shape[0] * b.shape[0])


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 E||X - Y|| - E||X - X'|| - E||Y - Y'|| (V-statistic: the pairs i = j count, so the value is >= 0 and
    two independent sets of n samples from one law score about (E||X - X'|| + E||Y - Y'||) / n, not 0)."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"energy_distance needs two [n, d] sets of equal d, got {tuple(x.shape)} and {tuple(y.shape)}")
    return float(2 * _mean_dist(x, y) - _mean_dist(x, x) - _mean_dist(y, y))


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2: sqrt(mean over random unit directions u of W2^2(u.x, u.y)); in 1-D W2 pairs the
    sorted projections (x and y are resampled to a common quantile grid when their sizes differ)."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"sliced_wasserstein needs two [n, d] sets of equal d, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(x.shape[1], projections, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    px, _ = (x.double() @ u).sort(dim=0)  # [n, P]
    py, _ = (y.double() @ u).sort(dim=0)  # [m, P]
    if px.shape[0] != py.shape[0]:
        q = torch.linspace(0, 1, max(px.shape[0], py.shape[0]), dtype=torch.float64)
        px, py = torch.quantile(px, q, dim=0), torch.quantile(py, q, dim=0)
    return float((px - py).pow(2).mean().sqrt())
