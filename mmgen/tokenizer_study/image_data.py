"""Pixels for image tokenizers: decoded image pools, random-crop batches, and evaluation images.

Batch `step` of a `CropSampler` is a pure function of (seed, step), so a resumed run sees exactly the batches an
uninterrupted one would. A source whose images are smaller than the crop (CIFAR-10's 32 px) is cropped at
its own size with a proportionally larger batch: every step carries the same number of pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from mmgen.data.documents import SampleError, decode_image

IMAGE_SOURCES = ("flickr8k", "cifar10", "shapes")


def source_images(source: str, split: str, limit: int = 0) -> list[np.ndarray]:
    """Decoded (H, W, 3) uint8 images of a training source and split (`train` or `test`)."""
    from mmgen.data import sources

    if source == "flickr8k":
        return [d.images[0].rgb() for d in sources.flickr8k(split, captions_per_image=1, limit=limit)]
    if source == "cifar10":
        return [d.images[0].rgb() for d in sources.cifar10(split, limit=limit)]
    if source == "shapes":
        from mmgen.config import ShapesConfig
        from mmgen.data.shapes import ShapesGenerator

        gen = ShapesGenerator(ShapesConfig(split=split))  # type: ignore[arg-type]
        return [gen.pair(i)[0] for i in range(limit or 10000)]
    raise ValueError(f"unknown image source {source!r}; known: {', '.join(IMAGE_SOURCES)}")


@dataclass
class Pool:
    """Images of one source and the crop side used for them."""

    name: str
    images: list[np.ndarray]
    crop: int

    @classmethod
    def of(cls, name: str, images: list[np.ndarray], crop: int, multiple: int) -> Pool:
        """Keep the images that hold a `crop` square; if none does, crop at the largest side all of them hold."""
        if not images:
            raise ValueError(f"image source {name!r} gave no images")
        big = [im for im in images if min(im.shape[:2]) >= crop]
        if big:
            return cls(name, big, crop)
        side = min(min(im.shape[:2]) for im in images) // multiple * multiple
        if side < multiple:
            raise ValueError(f"images of {name!r} are smaller than one {multiple}x{multiple} latent position")
        return cls(name, images, side)

    def center_crops(self, n: int) -> torch.Tensor:
        """The first n images, centre-cropped: uint8 [n, 3, crop, crop]."""
        out = []
        for im in self.images[:n]:
            h, w = im.shape[:2]
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
            out.append(im[top : top + self.crop, left : left + self.crop])
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


class CropSampler:
    """Random crops with horizontal flips; one source per step, drawn with `weights`."""

    def __init__(self, pools: list[Pool], weights: list[float], crop: int, batch: int, seed: int):
        assert len(pools) == len(weights) and pools
        w = np.asarray(weights, dtype=np.float64)
        self.pools, self.p, self.crop, self.batch, self.seed = pools, w / w.sum(), crop, batch, seed

    def batch_size(self, pool: Pool) -> int:
        return max(1, round(self.batch * (self.crop / pool.crop) ** 2))

    def __call__(self, step: int) -> tuple[str, torch.Tensor]:
        """(source name, uint8 [B, 3, c, c]) for training step `step`."""
        rng = np.random.default_rng([self.seed, step])
        pool = self.pools[int(rng.choice(len(self.pools), p=self.p))]
        c = pool.crop
        out = np.empty((self.batch_size(pool), c, c, 3), dtype=np.uint8)
        for k, i in enumerate(rng.integers(len(pool.images), size=len(out))):
            im = pool.images[i]
            top = int(rng.integers(im.shape[0] - c + 1))
            left = int(rng.integers(im.shape[1] - c + 1))
            crop = im[top : top + c, left : left + c]
            out[k] = crop[:, ::-1] if rng.random() < 0.5 else crop
        return pool.name, torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def build_pools(recipe, split: str, limit: int = 0) -> list[Pool]:
    """One pool per recipe source (`limit` images each, 0 = the recipe's `images_per_source`)."""
    n = limit or recipe.images_per_source
    return [Pool.of(s, source_images(s, split, n), recipe.crop_size, recipe.downsample) for s in recipe.sources]


# ------------------------------------------------------------------------------------ evaluation images
def eval_images(spec: str = "kodak", limit: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """(name, (H, W, 3) uint8) of every image in a directory or zip (`kodak`: the 24 Kodak photographs);
    `shapes-test` gives held-out shapes images (`limit` of them, default 256); `flickr8k-test` the held-out
    Flickr8k photos (`flickr8k_test`).

    A file that does not decode raises `SampleError` naming it.
    """
    from mmgen.data.sources import image_files

    if spec == "flickr8k-test":
        yield from flickr8k_test(limit)
        return
    if spec == "shapes-test":
        for i, im in enumerate(source_images("shapes", "test", limit or 256)):
            yield f"shapes-test-{i:05d}", im
        return
    for k, (name, data) in enumerate(image_files(spec)):
        if limit and k >= limit:
            return
        try:
            yield name, decode_image(data)
        except SampleError as e:
            raise SampleError(f"{spec}: {name}: {e}") from e


def flickr8k_test(limit: int = 0, multiple: int = 16) -> Iterator[tuple[str, np.ndarray]]:
    """The Flickr8k `test` split (the last 10 % of the photos; tokenizer recipes train on `train` only) at full
    size, centre-cropped to sides that are multiples of `multiple`, so every f <= 16 sees the same pixels unpadded."""
    from mmgen.data import sources

    for d in sources.flickr8k("test", captions_per_image=1, limit=limit):
        im = d.images[0].rgb()
        h, w = im.shape[0] // multiple * multiple, im.shape[1] // multiple * multiple
        top, left = (im.shape[0] - h) // 2, (im.shape[1] - w) // 2
        yield (
            f"flickr8k-{d.images[0].meta['image'].rsplit('.', 1)[0]}",
            np.ascontiguousarray(im[top : top + h, left : left + w]),
        )


def pad_to_multiple(x: torch.Tensor, f: int) -> torch.Tensor:
    """Reflect-pad [N, C, H, W] on the bottom/right so H and W are multiples of f (crop back after decoding)."""
    h, w = x.shape[-2:]
    ph, pw = -h % f, -w % f
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return torch.nn.functional.pad(x.float(), (0, pw, 0, ph), mode=mode).to(x.dtype)
