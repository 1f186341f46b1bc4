"""Latents cached once: every image encoded with the frozen image tokenizer and stored as `.npy` in shards.

Training from such shards (data.latents=true) skips decoding, resizing and encoding. Latents are only
valid for the tokenizer that made them, so the folder's index.json records that tokenizer's identity: the
sha256 of its weights (names, dtypes, shapes, bytes: latent_mean / latent_std included) and of its recipe.
Training compares it with the run's tokenizer and refuses a mismatch.

    index.json  {"prefix", "samples", "shards": {name: count}, "skipped", "complete": true,
                 "latents": {"tokenizer": {"name", "sha256", ...}, "image_size", "shape": [C, h, w], "dtype"}}

Writing is resumable: after each shard `cache_state.json` records the shards written and the raw index of
the source stream where the next shard starts (the reader's cursor), so a rerun continues from there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmgen.config import to_dict
from mmgen.data.documents import Document, Image, to_sample
from mmgen.data.packing import to_model_pixels
from mmgen.data.shards import INDEX_FILE, Item
from mmgen.errors import DataError

STATE_FILE = "cache_state.json"


def tokenizer_identity(tok) -> dict[str, Any]:
    """What makes latents comparable: the sha256 of the weights and the recipe, and the latent geometry."""
    h = hashlib.sha256()
    for name, t in sorted(tok.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(to_dict(tok.recipe), sort_keys=True).encode())
    return {"name": tok.recipe.name, "kind": tok.kind, "sha256": h.hexdigest(), "downsample": tok.downsample,
            "latent_channels": tok.latent_channels}  # fmt: skip


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


class LatentCache:
    """Writes documents with latents instead of pixels to `out`, a shard of `shard_size` at a time."""

    def __init__(self, out: str | Path, tok, image_size: int, *, source: str, prefix: str = "latents",
                 shard_size: int = 1000, batch_size: int = 64, dtype: str = "float32", restart: bool = False):  # fmt: skip
        if image_size % tok.downsample:
            raise DataError(f"image size {image_size} is not a multiple of the tokenizer's downsampling "
                            f"{tok.downsample}")  # fmt: skip
        self.out, self.tok, self.image_size = Path(out), tok.eval(), image_size
        self.prefix, self.shard_size, self.batch_size, self.dtype = prefix, shard_size, batch_size, np.dtype(dtype)
        g = image_size // tok.downsample
        self.meta = {"tokenizer": tokenizer_identity(tok), "image_size": image_size,
                     "shape": [tok.latent_channels, g, g], "dtype": self.dtype.name, "source": source}  # fmt: skip
        self.state = {"next_index": 0, "shards": {}, "skipped": 0, "skipped_examples": [], "latents": self.meta}
        path = self.out / STATE_FILE
        if path.is_file() and not restart:
            old = json.loads(path.read_text())
            if old.get("latents") != self.meta:
                diff = sorted(k for k in self.meta if old.get("latents", {}).get(k) != self.meta[k])
                raise DataError(f"{self.out} holds a cache made with other settings (differs in {', '.join(diff)}):"
                                f" use another --out, or --restart to overwrite it")  # fmt: skip
            self.state = old
        elif (self.out / INDEX_FILE).is_file() and not restart and not path.is_file():
            raise DataError(f"{self.out} already holds shards (index.json): use another --out, or --restart")

    @property
    def start(self) -> int:
        """Raw index of the source stream where the next shard starts (0 for a fresh cache)."""
        return int(self.state["next_index"])

    @torch.no_grad()
    def encode(self, docs: list[Document]) -> list[Document]:
        """The documents with every image replaced by its latents [C, h, w], encoded batch_size at a time."""
        images = [im for d in docs for im in d.images]
        z: list[np.ndarray] = []
        for a in range(0, len(images), self.batch_size):
            px = np.stack([to_model_pixels(im, self.image_size) for im in images[a : a + self.batch_size]])
            z += list(self.tok.encode(torch.from_numpy(px)).numpy().astype(self.dtype))
        lat = iter(z)
        return [Document(d.key, [s if isinstance(s, str) else Image(latents=next(lat), meta=s.meta, loss=s.loss)
                                 for s in d.segments], d.meta) for d in docs]  # fmt: skip

    def _write_shard(self, docs: list[Document], next_index: int) -> None:
        import webdataset as wds

        name = f"{self.prefix}-{len(self.state['shards']):06d}.tar"
        tmp = self.out / (name + ".tmp")
        with wds.TarWriter(str(tmp)) as sink:
            for doc in self.encode(docs):
                sink.write(to_sample(doc))
        tmp.replace(self.out / name)
        self.state["shards"][name] = len(docs)
        self.state["next_index"] = next_index
        _atomic_json(self.out / STATE_FILE, self.state)

    def _skip(self, skipped: list[tuple[str, str]]) -> None:
        self.state["skipped"] += len(skipped)
        self.state["skipped_examples"] = (self.state["skipped_examples"] + [list(s) for s in skipped])[:50]

    def run(self, items: Iterable[Item], unreported=lambda: []) -> dict[str, Any]:
        """Cache the documents of `items` (a one-pass stream started at `self.start`) and return the index;
        `unreported()` gives the samples skipped after the last item."""
        self.out.mkdir(parents=True, exist_ok=True)
        pending: list[Document] = []
        last = self.start - 1
        for item in items:
            self._skip(item.skipped)
            pending.append(item.doc)
            last = item.index
            if len(pending) == self.shard_size:
                self._write_shard(pending, last + 1)
                pending = []
        self._skip(unreported())
        if pending:
            self._write_shard(pending, last + 1)
        index = {"prefix": self.prefix, "samples": sum(self.state["shards"].values()), "shards": self.state["shards"],
                 "skipped": self.state["skipped"], "skipped_examples": self.state["skipped_examples"],
                 "complete": True, "latents": self.meta}  # fmt: skip
        _atomic_json(self.out / INDEX_FILE, index)
        return index


def check_latents(shards: str, tok, image_size: int) -> dict[str, Any]:
    """The cache's index.json, after checking it was made by `tok` at `image_size` and is complete."""
    p = Path(shards)
    folder = p if p.is_dir() else p.parent
    path = folder / INDEX_FILE
    fix = "write it with `python scripts/cache_latents.py --source ... --tokenizer <the run's image_tokenizer>`"
    if not path.is_file():
        raise DataError(f"data.latents: no {INDEX_FILE} in {folder}, so nothing says which tokenizer made its "
                        f"latents; {fix}")  # fmt: skip
    index = json.loads(path.read_text())
    meta = index.get("latents")
    if not meta:
        raise DataError(f"data.latents: {folder} holds images, not cached latents; {fix} (or set data.latents=false)")
    if not index.get("complete"):
        raise DataError(f"data.latents: the cache in {folder} is incomplete; rerun scripts/cache_latents.py to finish")
    mine, theirs = tokenizer_identity(tok), meta["tokenizer"]
    if theirs["sha256"] != mine["sha256"]:
        raise DataError(
            f"data.latents: the latents in {folder} were made by image tokenizer '{theirs['name']}' (sha256 "
            f"{theirs['sha256'][:12]}), this run uses '{mine['name']}' (sha256 {mine['sha256'][:12]}): set "
            f"image_tokenizer to the one that made them, or re-cache with `scripts/cache_latents.py --tokenizer "
            f"<this run's image_tokenizer>`"
        )  # fmt: skip
    if meta["image_size"] != image_size:
        raise DataError(f"data.latents: the latents in {folder} encode {meta['image_size']}-pixel images, this "
                        f"run has data.image_size={image_size}: match it or re-cache with --image-size "
                        f"{image_size}")  # fmt: skip
    return index
