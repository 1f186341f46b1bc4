"""Quantise a trained continuous latent to k bits per channel, without retraining (the rate-distortion sweep).

Each channel of the normalised latent gets its own Lloyd-Max scalar quantiser with 2^k levels, fitted on
latents of training crops: levels start at the 2^k quantile midpoints, then alternate "boundaries =
midpoints of levels" and "levels = mean of the values between boundaries". A token then holds
channels x k bits, the continuous counterpart of log2 K for a codebook.
"""

from __future__ import annotations

import torch


class KBitQuantizer:
    def __init__(self, levels: torch.Tensor):
        assert levels.dim() == 2, levels.shape  # [C, 2^k], sorted per channel
        self.levels = levels
        self.bounds = (levels[:, 1:] + levels[:, :-1]) / 2  # [C, 2^k - 1]
        self.bits = (levels.shape[1] - 1).bit_length()

    @classmethod
    def fit(
        cls, z: torch.Tensor, bits: int, iters: int = 25, max_values: int = 200_000, seed: int = 0
    ) -> KBitQuantizer:
        """Fit on latents z [N, C, h, w] (normalised or not: the quantiser follows their scale)."""
        if not 1 <= bits <= 12:
            raise ValueError(f"bits per channel must lie in 1..12, got {bits}")
        n = 2**bits
        values = z.transpose(0, 1).reshape(z.shape[1], -1).double()  # [C, M]
        if values.shape[1] > max_values:
            g = torch.Generator().manual_seed(seed)
            values = values[:, torch.randperm(values.shape[1], generator=g)[:max_values]]
        levels = torch.quantile(values, (torch.arange(n, dtype=torch.double) + 0.5) / n, dim=1).T  # [C, n]
        for _ in range(iters):
            bounds = (levels[:, 1:] + levels[:, :-1]) / 2
            cell = torch.stack([torch.bucketize(v, b.contiguous()) for v, b in zip(values, bounds)])  # [C, M] in [0, n)
            sums = torch.zeros_like(levels).scatter_add_(1, cell, values)
            counts = torch.zeros_like(levels).scatter_add_(1, cell, torch.ones_like(values))
            levels = torch.where(counts > 0, sums / counts.clamp_min(1), levels)
            levels = levels.sort(dim=1).values
        return cls(levels.float())

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, C, h, w] -> level ids [N, C, h, w] in [0, 2^k)."""
        flat = z.transpose(0, 1).reshape(z.shape[1], -1)
        ids = torch.stack([torch.bucketize(v, b) for v, b in zip(flat, self.bounds.to(z.dtype))])
        return ids.view(z.shape[1], z.shape[0], *z.shape[2:]).transpose(0, 1)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Quantised latents, same shape and dtype as z."""
        ids = self.codes(z)
        lv = self.levels.to(z.dtype)
        return torch.stack([lv[c][ids[:, c]] for c in range(z.shape[1])], dim=1)
