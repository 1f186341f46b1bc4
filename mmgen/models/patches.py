"""Latents <-> image tokens, and per-image values <-> the dense [B, L] token layout of a packed batch."""

from __future__ import annotations

import torch


def patchify(z: torch.Tensor, p: int) -> torch.Tensor:
    """[N, C, h, w] -> [N, (h/p)(w/p), p*p*C], patches in row-major order."""
    N, C, h, w = z.shape
    z = z.reshape(N, C, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # N, gh, gw, p, p, C
    return z.reshape(N, (h // p) * (w // p), p * p * C)


def unpatchify(x: torch.Tensor, p: int, grid: tuple[int, int] | list[int], channels: int) -> torch.Tensor:
    """[N, gh*gw, p*p*C] -> [N, C, gh*p, gw*p]."""
    gh, gw = grid
    N = x.shape[0]
    x = x.reshape(N, gh, gw, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(N, channels, gh * p, gw * p)


def to_dense(values: torch.Tensor, image: torch.Tensor, patch: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Place per-image token values [N, G, P] at the positions `where` ([B, L] bool) of image `image` and
    patch `patch`; zeros elsewhere. Returns [B, L, P]."""
    B, L = image.shape
    out = values.new_zeros(B, L, values.shape[-1])
    out[where] = values[image[where], patch[where]]
    return out


def per_token(values: torch.Tensor, image: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Per-image scalars [N] at the positions `where` of each image, zeros elsewhere: [B, L]."""
    out = values.new_zeros(image.shape)
    out[where] = values[image[where]]
    return out


def from_dense(
    dense: torch.Tensor, image: torch.Tensor, patch: torch.Tensor, where: torch.Tensor, n_images: int, n_tokens: int
) -> torch.Tensor:
    """Inverse of `to_dense` for images that appear at `where`: [B, L, P] -> [n_images, G, P] (zeros for
    images that do not appear)."""
    out = dense.new_zeros(n_images, n_tokens, dense.shape[-1])
    out[image[where], patch[where]] = dense[where]
    return out
