"""Reconstruction metrics, each computed per image and then averaged over images.

PSNR and SSIM come from torchmetrics with `data_range` equal to the range of the images they are given
(1.0 for [0, 1]); batch-level PSNR (log of the mean MSE over a batch) is a known bug elsewhere and is not used.
The Frechet distance runs on features of a classifier this project trains itself (`feature_net.py`), so it
is an in-project number, not comparable to published rFID.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] -> float [0, 1], rounded to 8-bit levels (what a saved PNG holds)."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return torch.round((x.float().clamp(-1, 1) + 1.0) * 127.5) / 255.0


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N] PSNR in dB of images in [0, 1] ([N, 3, H, W] each)."""
    assert pred.shape == target.shape and pred.dim() == 4, (pred.shape, target.shape)
    return peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N] SSIM (Gaussian window 11, sigma 1.5) of images in [0, 1]."""
    assert pred.shape == target.shape and pred.dim() == 4, (pred.shape, target.shape)
    return structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")


def code_usage(indices: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Usage of a discrete codebook over all tokens in `indices`.

    usage = fraction of codes used at least once; entropy H = -sum p log2 p of the code frequencies (the
    effective bits per token); perplexity = 2^H (the effective number of codes).
    """
    counts = torch.bincount(indices.reshape(-1).long(), minlength=codebook_size).double()
    assert counts.numel() == codebook_size, "an index lies outside the codebook"
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * p.log2()).sum())
    return {
        "codebook_size": codebook_size,
        "tokens": int(counts.sum()),
        "codes_used": int((counts > 0).sum()),
        "usage": float((counts > 0).double().mean()),
        "entropy_bits": entropy,
        "perplexity": 2.0**entropy,
        "nominal_bits": math.log2(codebook_size),
    }


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two [n, d] feature sets.

    The trace of the matrix square root is the sum of square roots of the eigenvalues of S_a S_b, which are
    real and non-negative for covariance matrices (computed via the symmetric form S_a^(1/2) S_b S_a^(1/2)).
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two [n >= 2, d] feature sets of the same d, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_sqrt)


def grouped_usage(ids: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Usage of G independent code groups per token: ids [T, G] (G = 1: one codebook).

    Entropies add over groups (an upper bound on the joint entropy of the token); usage is the mean over groups.
    """
    assert ids.dim() == 2, ids.shape
    per = [code_usage(ids[:, g], codebook_size) for g in range(ids.shape[1])]
    if len(per) == 1:
        return per[0]
    entropy = sum(u["entropy_bits"] for u in per)
    return {
        "codebook_size": codebook_size,
        "groups": len(per),
        "tokens": per[0]["tokens"],
        "codes_used": sum(u["codes_used"] for u in per),
        "usage": float(np.mean([u["usage"] for u in per])),
        "entropy_bits": entropy,
        "perplexity": 2.0**entropy,
        "nominal_bits": len(per) * math.log2(codebook_size),
    }
