"""Procedural 2-D targets of the continuous inference-first study, all centred near the origin at scale ~1.

ring8:        8 Gaussians of std 0.05 on the unit circle (point mass at the mean scores energy distance 0.74).
checkerboard: uniform on the 8 black cells of a 4 x 4 board over [-1, 1]^2; sampling the two coordinates
              independently from their marginals puts exactly half the mass off the support.
moons:        two interleaved half circles (radius 1, Gaussian jitter 0.05), centred.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Sampler = Callable[[int, torch.Generator], torch.Tensor]  # (n, generator) -> [n, 2] fp32


def ring8(n: int, g: torch.Generator, radius: float = 1.0, std: float = 0.05) -> torch.Tensor:
    k = torch.randint(0, 8, (n,), generator=g)
    ang = k.double() * (2 * math.pi / 8)
    centre = radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)
    return (centre + std * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def checkerboard(n: int, g: torch.Generator, cells: int = 4) -> torch.Tensor:
    """Cell (i, j) of the board is on the support when i + j is even; cell side 2 / cells."""
    side = 2.0 / cells
    ij = torch.randint(0, cells, (n, 2), generator=g)
    ij[:, 1] = (ij[:, 1] - ij[:, 1] % 2) + (ij[:, 0] % 2)  # the column keeps the parity of the row: i + j even
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    return (-1.0 + side * (ij.double() + u)).float()


def on_checkerboard(x: torch.Tensor, cells: int = 4) -> torch.Tensor:
    """[n, 2] -> [n] bool: inside [-1, 1]^2 and on a cell with i + j even."""
    ij = torch.floor((x.double() + 1.0) * cells / 2.0).long()
    inside = ((ij >= 0) & (ij < cells)).all(dim=-1)
    return inside & (ij.sum(-1) % 2 == 0)


def moons(n: int, g: torch.Generator, std: float = 0.05) -> torch.Tensor:
    upper = torch.rand(n, generator=g) < 0.5
    ang = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    a = torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)  # upper half circle around (0, 0)
    b = torch.stack([1.0 - torch.cos(ang), 0.5 - torch.sin(ang)], dim=-1)  # lower one around (1, 0.5)
    x = torch.where(upper[:, None], a, b) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    return (x + std * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


TARGETS: dict[str, Sampler] = {"ring8": ring8, "checkerboard": checkerboard, "moons": moons}


def get_target(name: str) -> Sampler:
    if name not in TARGETS:
        raise ValueError(f"unknown 2-D target {name!r}: choose from {sorted(TARGETS)}")
    return TARGETS[name]
