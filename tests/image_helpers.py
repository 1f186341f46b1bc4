"""Image helpers that several test modules share: a tiny image-tokenizer recipe, smooth synthetic photos, and an
img2dataset folder with good and bad samples."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image as PILImage

from mmgen.config import ImageTokenizerRecipe
from mmgen.tokenizer_study.image_data import Pool


def tiny(kind: str = "kl", **kw) -> ImageTokenizerRecipe:
    base = dict(
        name=f"tiny_{kind}",
        kind=kind,
        downsample=4,
        width=8,
        channel_mult=[1, 2, 2],
        latent_channels=3,
        codebook_size=32,
        code_dim=4,
        dead_code_steps=5,
        levels=[5, 4, 3],
        sources=["shapes"],
        crop_size=16,
        batch_size=8,
        steps=4,
        lr=3e-3,
        warmup_steps=2,
        log_every=2,
        ckpt_every=2,
        val_images=4,
        stats_batches=2,
    )
    return ImageTokenizerRecipe(**{**base, **kw})


def smooth_images(n: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """Varied synthetic photos: random colour fields, bilinearly upsampled from 4x4, plus mild noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    up = (up + 0.05 * torch.randn(up.shape, generator=g)).clamp(0, 1)
    return list((up * 255).round().byte().permute(0, 2, 3, 1).numpy())


def pools(n_train: int = 64, crop: int = 16) -> tuple[list[Pool], list[Pool]]:
    """(train, validation) pools of smooth synthetic photos for a `tiny` recipe (f = 4)."""
    return [Pool.of("synthetic", smooth_images(n_train), crop, 4)], [
        Pool.of("synthetic", smooth_images(8, seed=1), crop, 4)
    ]


COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "white": (240, 240, 240)}


def image_bytes(color: str, size: tuple[int, int] = (40, 30), fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, COLORS[color]).save(buf, format=fmt)
    return buf.getvalue()


def write_img2dataset_fixture(root: Path) -> dict[str, tuple[str, str]]:
    """4 tars of 4 samples: 13 good ({key}.txt or only .json), 3 bad; stats and parquet files beside them."""
    root.mkdir(parents=True, exist_ok=True)
    good: dict[str, tuple[str, str]] = {}
    names = list(COLORS)
    for shard in range(4):
        with wds.TarWriter(str(root / f"{shard:05d}.tar")) as sink:
            for i in range(4):
                key, color = f"{shard:05d}{i:04d}", names[(shard + i) % 4]
                caption = f"a {color} picture number {shard * 4 + i}"
                sample = {
                    "__key__": key,
                    "jpg": image_bytes(color),
                    "txt": caption.encode(),
                    "json": json.dumps({"caption": caption, "alt": f"alt {caption}", "key": key}).encode(),
                }
                if (shard, i) == (1, 2):  # caption only in the .json: still read
                    del sample["txt"]
                if (shard, i) == (0, 1):  # no caption anywhere
                    del sample["txt"]
                    sample["json"] = json.dumps({"key": key, "status": "success"}).encode()
                elif (shard, i) == (2, 3):
                    sample["jpg"] = b"\xff\xd8 not a jpeg"
                elif (shard, i) == (3, 0):
                    sample["jpg"] = image_bytes(color, (12, 40))
                else:
                    good[key] = (caption, color)
                sink.write(sample)
        (root / f"{shard:05d}_stats.json").write_text(json.dumps({"count": 4}))
        (root / f"{shard:05d}.parquet").write_bytes(b"PAR1 not read PAR1")
    return good
