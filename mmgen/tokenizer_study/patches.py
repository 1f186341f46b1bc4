"""Patch geometry of the reference tokenizers (`references.py`): an image as its grid of f x f patches.

    p = unshuffle(x)     [N, 3, H, W] -> [N, h, w, D],  h = H / f, w = W / f, D = 3 f^2 (pixel_unshuffle order)

plus the nearest-code search that k-means fitting and encoding share.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

CHUNK = 8192  # patches per distance block: [CHUNK, K] float32 distances (128 MB at K = 4096)


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]; a float tensor is taken to be in [-1, 1] already."""
    return pixels.float() / 127.5 - 1.0 if pixels.dtype == torch.uint8 else pixels.float()


def crop_to_multiple(pixels: torch.Tensor, f: int) -> torch.Tensor:
    """Centre crop of [N, 3, H, W] to the largest sides that are multiples of f."""
    h, w = pixels.shape[-2:]
    if h < f or w < f:
        raise ValueError(f"image {h}x{w} is smaller than one {f}x{f} patch")
    top, left = (h % f) // 2, (w % f) // 2
    return pixels[..., top : top + h - h % f, left : left + w - w % f]


def patch_grid(pixels: torch.Tensor, f: int) -> torch.Tensor:
    """[N, 3, H, W] (H, W multiples of f) -> [N, h, w, 3 f^2] patches in the input's dtype."""
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected images of shape [N, 3, H, W], got {list(pixels.shape)}")
    h, w = pixels.shape[-2:]
    if h % f or w % f:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {f}: crop it with crop_to_multiple")
    return F.pixel_unshuffle(pixels, f).permute(0, 2, 3, 1)


def from_patches(p: torch.Tensor, f: int) -> torch.Tensor:
    """[N, h, w, 3 f^2] -> [N, 3, h f, w f] (inverse of `patch_grid`)."""
    return F.pixel_shuffle(p.permute(0, 3, 1, 2).contiguous(), f)


def training_patches(images: Iterable[torch.Tensor], f: int) -> Iterable[torch.Tensor]:
    """[M, 3 f^2] patch rows (input dtype) of each [N, 3, H, W] or [3, H, W] image, centre-cropped to multiples of f."""
    for x in images:
        x = x[None] if x.dim() == 3 else x
        yield patch_grid(crop_to_multiple(x, f), f).reshape(-1, 3 * f * f)


def nearest(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [M], squared distances [M]) of the nearest code to each row of x [M, D], in blocks of CHUNK rows.

    ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; the argmin needs only the last two terms.
    """
    c2 = codebook.square().sum(1)
    ids, d2 = torch.empty(len(x), dtype=torch.long), torch.empty(len(x))
    buf = torch.empty(min(CHUNK, len(x)), len(codebook))  # reused: a fresh [CHUNK, K] block per chunk costs page faults
    for i in range(0, len(x), CHUNK):
        xb = x[i : i + CHUNK]
        dist = torch.addmm(c2, xb, codebook.T, alpha=-2.0, out=buf[: len(xb)])  # [b, K]
        best, arg = dist.min(1)
        ids[i : i + CHUNK], d2[i : i + CHUNK] = arg, (best + xb.square().sum(1)).clamp(min=0)
    return ids, d2
