"""Trunk-free reference tokenizers of f x f RGB patches: principal components (continuous) and k-means (discrete).

No network: each reference is fitted on patches of training photos and then tokenizes any image whose sides are
multiples of f. An image is cut into its grid of non-overlapping patches, each flattened to D = 3 f^2 values
(pixel_unshuffle order, pixels in [-1, 1] as for the trained tokenizers; the geometry is in `patches.py`):

    patches   p = unshuffle(x / 127.5 - 1)                              [N, h, w, D],  h = H / f, w = W / f
    PCA       z = (p - mean) V_c           p_hat = mean + z V_c^T      V_c: top-c eigenvectors of the patch covariance
    k-means   id = argmin_k ||p - C_k||^2   p_hat = C_id                C: K centroids (Lloyd's algorithm)

PCA latents are [N, c, h, w] floats (c continuous channels: the best linear c-channel tokenizer in squared
error on the training patches); k-means latents are code ids [N, 1, h, w] (log2 K bits per token). Both expose
the interface `evaluate.evaluate` uses (`kind`, `downsample`, `encode`, `decode`), so they are scored by the
same metric code as the trained tokenizers, and save as config.json + model.safetensors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mmgen.errors import MissingInput
from mmgen.tokenizer_study.bits import TokenBits
from mmgen.tokenizer_study.patches import from_patches, nearest, patch_grid, to_float, training_patches

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
FORMAT = "mmgen-patch-reference/1"


class PatchReference:
    """Shared plumbing: patch geometry, save / load. Subclasses set `kind` and the tensors in `state`."""

    kind = ""

    def __init__(self, downsample: int, fit_info: dict | None = None):
        if downsample < 1:
            raise ValueError(f"patch size must be >= 1, got {downsample}")
        self.downsample = downsample
        self.dim = 3 * downsample * downsample
        self.fit_info = fit_info or {}

    def _patches(self, pixels: torch.Tensor) -> torch.Tensor:
        return patch_grid(to_float(pixels), self.downsample)

    def reconstruct(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(pixels))

    def config(self) -> dict:
        return {"format": FORMAT, "kind": self.kind, "downsample": self.downsample, "fit": self.fit_info}

    def state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state().items()}, str(folder / WEIGHTS_NAME))
        (folder / CONFIG_NAME).write_text(json.dumps(self.config(), indent=1) + "\n")
        return folder


class PCAReference(PatchReference):
    """Linear continuous tokenizer: the top-c principal components of f x f patches."""

    kind = "pca"

    def __init__(self, downsample: int, mean: torch.Tensor, components: torch.Tensor, fit_info: dict | None = None):
        super().__init__(downsample, fit_info)
        if mean.shape != (self.dim,) or components.dim() != 2 or components.shape[1] != self.dim:
            raise ValueError(
                f"f = {downsample}: need mean [{self.dim}] and components [c, {self.dim}], "
                f"got {list(mean.shape)} and {list(components.shape)}"
            )
        self.mean = mean.float().contiguous()  # [D]
        self.components = components.float().contiguous()  # orthonormal rows [c, D]
        self.latent_channels = components.shape[0]

    @classmethod
    def fit(cls, images: Iterable[torch.Tensor], downsample: int, channels: int) -> PCAReference:
        """Mean and top-`channels` eigenvectors of the covariance of every grid patch of `images`.

        Sums of p and p p^T are accumulated in float64 image by image, so no patch matrix is kept.
        Each component's sign is fixed (its largest-magnitude entry positive): the fit is a pure function of the data.
        """
        d = 3 * downsample * downsample
        if not 1 <= channels <= d:
            raise ValueError(
                f"PCA channels must be in 1..{d} for {downsample}x{downsample} RGB patches, got {channels}"
            )
        s1, s2, n = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64), 0
        for rows in training_patches(images, downsample):
            p = to_float(rows)
            s1 += p.sum(0, dtype=torch.float64)
            s2 += (p.T @ p).double()
            n += len(p)
        if n < 2:
            raise ValueError("PCA needs at least two training patches")
        mean = s1 / n
        cov = s2 / n - torch.outer(mean, mean)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        order = torch.argsort(evals, descending=True)[:channels]
        comps = evecs[:, order].T  # [c, D]
        sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
        comps = comps * sign
        top = evals[order].clamp(min=0)
        info = {"patches": n, "variance_total": float(evals.clamp(min=0).sum()), "eigenvalues": top.tolist()}
        return cls(downsample, mean, comps, info)

    def truncate(self, channels: int) -> PCAReference:
        """The first `channels` components (the same as a fit with that many: principal components nest)."""
        if not 1 <= channels <= self.latent_channels:
            raise ValueError(f"can keep 1..{self.latent_channels} components, not {channels}")
        info = {**self.fit_info, "eigenvalues": self.fit_info.get("eigenvalues", [])[:channels]}
        return PCAReference(self.downsample, self.mean, self.components[:channels], info)

    @property
    def explained_variance(self) -> float:
        """Fraction of the training patches' variance the kept components hold."""
        if "variance_total" not in self.fit_info:
            return float("nan")
        return sum(self.fit_info["eigenvalues"]) / max(self.fit_info["variance_total"], 1e-30)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] uint8 or [-1, 1] float -> [N, c, H/f, W/f]."""
        z = (self._patches(pixels) - self.mean) @ self.components.T
        return z.permute(0, 3, 1, 2).contiguous()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[N, c, h, w] -> [N, 3, h f, w f] in [-1, 1] (not clamped)."""
        if z.dim() != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"PCA reference expects latents [N, {self.latent_channels}, h, w], got {list(z.shape)}")
        p = z.float().permute(0, 2, 3, 1) @ self.components + self.mean
        return from_patches(p, self.downsample)

    def bits(self, name: str, dtype_bits: int = 16) -> TokenBits:
        return TokenBits(
            name, "continuous", self.downsample, latent_channels=self.latent_channels, dtype_bits=dtype_bits
        )

    def config(self) -> dict:
        return {**super().config(), "channels": self.latent_channels}

    def state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "components": self.components}


class KMeansReference(PatchReference):
    """Discrete tokenizer: K centroids of f x f patches; a token is the id of the nearest one."""

    kind = "kmeans"

    def __init__(self, downsample: int, codebook: torch.Tensor, fit_info: dict | None = None):
        super().__init__(downsample, fit_info)
        if codebook.dim() != 2 or codebook.shape[1] != self.dim or len(codebook) < 1:
            raise ValueError(f"f = {downsample}: need a codebook [K, {self.dim}], got {list(codebook.shape)}")
        self.codebook = codebook.float().contiguous()
        self.codebook_size = len(codebook)
        self.latent_channels = 1

    @classmethod
    def fit(
        cls,
        images: Iterable[torch.Tensor],
        downsample: int,
        codebook_size: int,
        iters: int = 20,
        tol: float = 1e-4,
        seed: int = 0,
        max_patches: int = 0,
        init: str = "random",
    ) -> KMeansReference:
        """Lloyd's algorithm on the grid patches of `images` (a seeded sample of `max_patches` of them; 0 = all).

        init "random": K distinct training patches drawn with the seed; "kmeans++": D^2 sampling (Arthur &
        Vassilvitskii 2007). Stops after `iters` updates or when the mean distortion falls by less than `tol`
        (relative). An empty cluster is moved to the patch with the largest error. Deterministic for a seed.
        """
        if init not in ("random", "kmeans++"):
            raise ValueError(f"k-means init must be 'random' or 'kmeans++', got {init!r}")
        rows = torch.cat(list(training_patches(images, downsample)))  # input dtype: uint8 keeps it 4x smaller
        g = torch.Generator().manual_seed(seed)
        total = len(rows)
        if max_patches and total > max_patches:
            rows = rows[torch.randperm(total, generator=g)[:max_patches].sort().values]
        x = to_float(rows)
        if len(x) < codebook_size:
            raise ValueError(f"k-means with K = {codebook_size} needs at least K training patches, got {len(x)}")
        c = (
            _kmeanspp(x, codebook_size, g)
            if init == "kmeans++"
            else x[torch.randperm(len(x), generator=g)[:codebook_size]]
        )
        history: list[float] = []
        for _ in range(iters + 1):
            ids, d2 = nearest(x, c)
            history.append(float(d2.double().mean()) / x.shape[1])  # mean squared error per value
            if len(history) > iters or (len(history) > 1 and history[-2] - history[-1] <= tol * history[-2]):
                break
            counts = torch.bincount(ids, minlength=codebook_size)
            sums = torch.zeros_like(c).index_add_(0, ids, x)
            c = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], c)
            empty = (counts == 0).nonzero().flatten()
            if len(empty):  # re-seed at the worst-fitted patches
                c[empty] = x[d2.topk(len(empty)).indices]
        info = {
            "patches_available": total,
            "patches": len(x),
            "init": init,
            "seed": seed,
            "iterations": len(history) - 1,
            "mse_history": history,
        }
        return cls(downsample, c, info)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> code ids [N, 1, H/f, W/f] (int64)."""
        p = self._patches(pixels)
        ids, _ = nearest(p.reshape(-1, self.dim), self.codebook)
        return ids.view(*p.shape[:3])[:, None]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 4 or z.shape[1] != 1 or z.dtype != torch.long:
            raise ValueError(f"k-means reference expects code ids [N, 1, h, w] int64, got {list(z.shape)} {z.dtype}")
        if z.numel() and (z.min() < 0 or z.max() >= self.codebook_size):
            raise ValueError(f"code ids must lie in 0..{self.codebook_size - 1}")
        return from_patches(self.codebook[z[:, 0]], self.downsample)

    def bits(self, name: str) -> TokenBits:
        return TokenBits(name, "vq", self.downsample, codebook_size=self.codebook_size)

    def config(self) -> dict:
        return {**super().config(), "codebook_size": self.codebook_size}

    def state(self) -> dict[str, torch.Tensor]:
        return {"codebook": self.codebook}


def _kmeanspp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to its squared distance D^2."""
    idx = [int(torch.randint(len(x), (1,), generator=g))]
    d2 = (x - x[idx[0]]).square().sum(1)
    for _ in range(k - 1):
        j = (
            int(torch.multinomial(d2.double() + 1e-30, 1, generator=g))
            if float(d2.sum()) > 0
            else int(torch.randint(len(x), (1,), generator=g))
        )
        idx.append(j)
        d2 = torch.minimum(d2, (x - x[j]).square().sum(1))
    return x[idx].clone()


def load_reference(folder: str | Path) -> PCAReference | KMeansReference:
    """A reference saved with `save`."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise MissingInput(
            f"{folder}: no {CONFIG_NAME} + {WEIGHTS_NAME}; fit it with scripts/eval_references.py --save"
        )
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    if cfg.get("format") != FORMAT:
        raise MissingInput(f"{folder}/{CONFIG_NAME}: format {cfg.get('format')!r}, expected {FORMAT!r}")
    t = load_file(str(folder / WEIGHTS_NAME))
    if cfg["kind"] == "pca":
        return PCAReference(cfg["downsample"], t["mean"], t["components"], cfg.get("fit"))
    return KMeansReference(cfg["downsample"], t["codebook"], cfg.get("fit"))
