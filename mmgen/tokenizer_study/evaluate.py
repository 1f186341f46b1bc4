"""Reconstruction evaluation of one tokenizer on full-resolution images.

Each image is reflect-padded to a multiple of f, encoded, (optionally k-bit quantised), decoded, cropped back
and rounded to 8 bits. PSNR / SSIM are computed per image on [0, 1] images and averaged over images; code
usage and perplexity pool every token of every image; the Frechet distance pools 32x32 tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from mmgen.tokenizer.image import ImageTokenizer
from mmgen.tokenizer_study.bits import TokenBits, effective_compression
from mmgen.tokenizer_study.image_data import pad_to_multiple
from mmgen.tokenizer_study.metrics import frechet_distance, grouped_usage, psnr_per_image, ssim_per_image, to_unit

LatentFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def reconstruct(
    tok: ImageTokenizer, image: np.ndarray, latent_fn: LatentFn | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 -> (reconstruction [1, 3, H, W] in [0, 1] at 8-bit levels, latents [1, C, h, w])."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    z = tok.encode(pad_to_multiple(x, tok.downsample))
    if latent_fn is not None:
        z = latent_fn(z)
    return to_unit(tok.decode(z)[..., :h, :w]), z


@dataclass
class EvalResult:
    name: str
    bits: TokenBits
    per_image: list[dict] = field(default_factory=list)  # {image, psnr, ssim}
    usage: dict | None = None
    kl_rate_bits: float | None = None  # continuous: mean KL of the posterior per token, in bits
    fd: float | None = None
    recon: dict[str, np.ndarray] = field(default_factory=dict)  # kept reconstructions (H, W, 3) uint8

    def summary(self) -> dict:
        out = {
            "name": self.name,
            **self.bits.row(),
            "images": len(self.per_image),
            "psnr": float(np.mean([r["psnr"] for r in self.per_image])),
            "ssim": float(np.mean([r["ssim"] for r in self.per_image])),
        }
        if self.usage is not None:
            out.update({f"code_{k}": v for k, v in self.usage.items()})
            out["effective_compression"] = effective_compression(self.bits, self.usage["entropy_bits"])
        if self.kl_rate_bits is not None:
            out["kl_rate_bits"] = self.kl_rate_bits
        if self.fd is not None:
            out["fd_in_project"] = self.fd
        return out


@torch.no_grad()
def evaluate(
    tok: ImageTokenizer,
    images: Iterable[tuple[str, np.ndarray]],
    bits: TokenBits,
    feature_net=None,
    latent_fn: LatentFn | None = None,
    keep: Iterable[str] = (),
    code_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    codebook_size: int = 0,
) -> EvalResult:
    """Metrics of `tok` on `images`; `keep` names the images whose reconstructions are returned.

    `tok` is a trained `ImageTokenizer` or anything with its `kind` / `downsample` / `encode` / `decode`
    (the trunk-free references of `references.py`, kinds "pca" and "kmeans").

    Discrete tokenizers report code usage of `tok.indices`; `code_fn` (latents -> ids [N, G, h, w], G code
    groups per token) with `codebook_size` overrides that: the k-bit quantiser reports its per-channel levels.
    """
    from mmgen.tokenizer_study.feature_net import tile_features

    keep = set(keep)
    res = EvalResult(bits.name, bits)
    ids, feats_real, feats_fake, rates = [], [], [], []
    for name, img in images:
        recon, z = reconstruct(tok, img, latent_fn)
        if tok.kind == "kl":
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None]
            rates.append(tok.rate_bits(pad_to_multiple(x, tok.downsample)).reshape(-1))
        target = to_unit(torch.from_numpy(np.array(img)).permute(2, 0, 1)[None])
        res.per_image.append(
            {
                "image": name,
                "psnr": float(psnr_per_image(recon, target)[0]),
                "ssim": float(ssim_per_image(recon, target)[0]),
            }
        )
        if code_fn is not None:
            g = code_fn(z)  # [1, G, h, w]
            ids.append(g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]))
        elif tok.kind in ("vq", "fsq"):
            ids.append(tok.indices(z).reshape(-1, 1))
        if feature_net is not None:
            feats_real.append(tile_features(feature_net, target))
            feats_fake.append(tile_features(feature_net, recon))
        if name in keep:
            res.recon[name] = (recon[0].permute(1, 2, 0) * 255).round().byte().numpy()
    if not res.per_image:
        raise ValueError("no images to evaluate")
    if rates:
        res.kl_rate_bits = float(torch.cat(rates).double().mean())
    if ids:
        res.usage = grouped_usage(torch.cat(ids), codebook_size or tok.bottleneck.codebook_size)
    if feature_net is not None:
        res.fd = frechet_distance(np.concatenate(feats_real), np.concatenate(feats_fake))
    return res
