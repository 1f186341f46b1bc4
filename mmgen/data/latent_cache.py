"""Latents cached once: every image encoded with the frozen image tokenizer and stored as `.npy` in shards.

Training from such shards (data.latents=true) skips decoding, resizing and encoding. Latents are only
valid for the tokenizer that made them, so the folder's index.json records that tokenizer's identity: the
sha256 of its weights (names, dtypes, shapes, bytes: latent_mean / latent_std included) and of its recipe.
Training compares it with the run's tokenizer and refuses a mismatch; it reads only the shards index.json
lists (any other tar in the folder is refused), and every document carries the sha256 in its meta
(`image_tokenizer_sha256`), which the packer checks.

    index.json  {"prefix", "samples", "shards": {name: count}, "skipped", "complete": true,
                 "latents": {"tokenizer": {"name", "sha256", ...}, "image_size", "shape": [C, h, w], "dtype"}}

Writing is resumable: after each shard `cache_state.json` records the shards written, the raw index of the
source stream where the next shard starts (the reader's cursor) and the documents read so far (what --limit
counts), so a rerun with the same settings continues from there. A fresh cache (or --restart) first removes
an earlier cache's index.json, state and shards; index.json is written only once the cache is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmgen.config import to_dict
from mmgen.data.documents import Document, Image, to_sample
from mmgen.data.packing import LATENTS_KEY, to_model_pixels
from mmgen.data.shards import INDEX_FILE, Item, list_shards
from mmgen.errors import DataError, SampleError

STATE_FILE = "cache_state.json"


def tokenizer_identity(tok) -> dict[str, Any]:
    """What makes latents comparable: the sha256 of the weights and the recipe, and the latent geometry."""
    h = hashlib.sha256()
    for name, t in sorted(tok.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(to_dict(tok.recipe), sort_keys=True).encode())
    return {
        "name": tok.recipe.name,
        "kind": tok.kind,
        "sha256": h.hexdigest(),
        "downsample": tok.downsample,
        "latent_channels": tok.latent_channels,
    }


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


class LatentCache:
    """Writes documents with latents instead of pixels to `out`, a shard of `shard_size` at a time.

    `options` are the reader's settings (caption field, minimum image size, ...): a resumed cache must read
    its source exactly as the run that started it, so they are part of the settings compared on resume."""

    def __init__(
        self,
        out: str | Path,
        tok,
        image_size: int,
        *,
        source: str,
        prefix: str = "latents",
        shard_size: int = 1000,
        batch_size: int = 64,
        dtype: str = "float32",
        restart: bool = False,
        options: dict[str, Any] | None = None,
    ):
        if image_size % tok.downsample:
            raise DataError(
                f"image size {image_size} is not a multiple of the tokenizer's downsampling {tok.downsample}"
            )
        self.out, self.tok, self.image_size = Path(out), tok.eval(), image_size
        self.prefix, self.shard_size, self.batch_size, self.dtype = prefix, shard_size, batch_size, np.dtype(dtype)
        g = image_size // tok.downsample
        self.meta = {
            "tokenizer": tokenizer_identity(tok),
            "image_size": image_size,
            "shape": [tok.latent_channels, g, g],
            "dtype": self.dtype.name,
            "source": source,
            "options": options or {},
        }
        # read: documents taken from the source up to next_index (written or skipped at encoding)
        self.state = {
            "next_index": 0,
            "read": 0,
            "shards": {},
            "skipped": 0,
            "skipped_examples": [],
            "latents": self.meta,
        }
        self.fresh = True  # no cache to resume: run() first removes what an earlier cache left in `out`
        path = self.out / STATE_FILE
        if path.is_file() and not restart:
            old = json.loads(path.read_text())
            if old.get("latents") != self.meta:
                diff = sorted(k for k in self.meta if old.get("latents", {}).get(k) != self.meta[k])
                raise DataError(
                    f"{self.out} holds a cache made with other settings (differs in {', '.join(diff)}):"
                    f" use another --out, or --restart to overwrite it"
                )
            self.state, self.fresh = old, False
        elif (self.out / INDEX_FILE).is_file() and not restart and not path.is_file():
            raise DataError(f"{self.out} already holds shards (index.json): use another --out, or --restart")

    @property
    def start(self) -> int:
        """Raw index of the source stream where the next shard starts (0 for a fresh cache)."""
        return int(self.state["next_index"])

    @property
    def read(self) -> int:
        """Documents taken from the source so far (what a --limit counts)."""
        return int(self.state.get("read", 0))

    def _clear(self) -> None:
        """Remove an earlier cache's files: its index (so a half-written cache is never taken for complete),
        its state, and its shards (those of this prefix, and those the old index or state names)."""
        named: set[str] = set()
        for name in (INDEX_FILE, STATE_FILE):
            if (f := self.out / name).is_file():
                with contextlib.suppress(ValueError):
                    named.update(json.loads(f.read_text()).get("shards", {}))
        for f in [
            self.out / INDEX_FILE,
            self.out / STATE_FILE,
            *(self.out / n for n in named),
            *self.out.glob(f"{self.prefix}-*.tar"),
            *self.out.glob(f"{self.prefix}-*.tar.tmp"),
        ]:
            f.unlink(missing_ok=True)

    @torch.no_grad()
    def encode(self, docs: list[tuple[Document, list[np.ndarray]]]) -> list[Document]:
        """The documents with every image replaced by its latents [C, h, w] (from its model pixels
        [3, size, size]), encoded batch_size at a time; each document's meta names the tokenizer."""
        px = [p for _, pixels in docs for p in pixels]
        z: list[np.ndarray] = []
        for a in range(0, len(px), self.batch_size):
            z += list(
                self.tok.encode(torch.from_numpy(np.stack(px[a : a + self.batch_size]))).numpy().astype(self.dtype)
            )
        lat, sha = iter(z), self.meta["tokenizer"]["sha256"]
        return [
            Document(
                d.key,
                [s if isinstance(s, str) else Image(latents=next(lat), meta=s.meta, loss=s.loss) for s in d.segments],
                d.meta | {LATENTS_KEY: sha},
            )
            for d, _ in docs
        ]

    def _save(self, next_index: int, read: int) -> None:
        self.state["next_index"], self.state["read"] = next_index, read
        _atomic_json(self.out / STATE_FILE, self.state)

    def _write_shard(self, docs: list[tuple[Document, list[np.ndarray]]]) -> None:
        import webdataset as wds

        name = f"{self.prefix}-{len(self.state['shards']):06d}.tar"
        tmp = self.out / (name + ".tmp")
        with wds.TarWriter(str(tmp)) as sink:
            for doc in self.encode(docs):
                sink.write(to_sample(doc))
        tmp.replace(self.out / name)
        self.state["shards"][name] = len(docs)

    def _skip(self, skipped: list[tuple[str, str]]) -> None:
        self.state["skipped"] += len(skipped)
        self.state["skipped_examples"] = (self.state["skipped_examples"] + [list(s) for s in skipped])[:50]

    def run(self, items: Iterable[Item], unreported=lambda: [], limit: int = 0) -> dict[str, Any]:
        """Cache the documents of `items` (a one-pass stream started at `self.start`) and return the index;
        `unreported()` gives the samples skipped after the last item. With `limit`, stop once that many
        documents were taken from the source (this run and the ones it resumes)."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.fresh:
            self._clear()
        (self.out / INDEX_FILE).unlink(missing_ok=True)  # written again once the cache is complete
        pending: list[tuple[Document, list[np.ndarray]]] = []
        next_index, read = self.start, self.read
        for item in items:
            if limit and read >= limit:
                break
            self._skip(item.skipped)
            next_index, read = item.index + 1, read + 1
            try:  # decoded here, one document at a time: a broken image skips its document only
                pending.append((item.doc, [to_model_pixels(im, self.image_size) for im in item.doc.images]))
            except SampleError as e:
                self._skip([(item.doc.key, str(e))])
            if len(pending) == self.shard_size:
                self._write_shard(pending)
                self._save(next_index, read)
                pending = []
        self._skip(unreported())
        if pending:
            self._write_shard(pending)
        self._save(next_index, read)
        index = {
            "prefix": self.prefix,
            "samples": sum(self.state["shards"].values()),
            "shards": self.state["shards"],
            "skipped": self.state["skipped"],
            "skipped_examples": self.state["skipped_examples"],
            "complete": True,
            "latents": self.meta,
        }
        _atomic_json(self.out / INDEX_FILE, index)
        return index


def latent_index(spec: str) -> tuple[Path, dict[str, Any]]:
    """(folder, its index.json) of the cache at `spec` (a folder or a glob in it), checked to be a complete
    cache of latents."""
    p = Path(spec)
    folder = p if p.is_dir() else p.parent
    path = folder / INDEX_FILE
    fix = "write it with `python scripts/cache_latents.py --source ... --tokenizer <the run's image_tokenizer>`"
    if not path.is_file():
        raise DataError(
            f"data.latents: no {INDEX_FILE} in {folder}, so nothing says which tokenizer made its latents; {fix}"
        )
    index = json.loads(path.read_text())
    if not index.get("latents"):
        raise DataError(f"data.latents: {folder} holds images, not cached latents; {fix} (or set data.latents=false)")
    if not index.get("complete"):
        raise DataError(f"data.latents: the cache in {folder} is incomplete; rerun scripts/cache_latents.py to finish")
    return folder, index


def cached_shards(spec: str) -> tuple[list[str], str]:
    """(the shards at `spec` that the cache's index.json lists, the sha256 of the tokenizer that made them);
    a tar it does not list (another cache's, left in the folder) or a listed one that is gone is refused."""
    folder, index = latent_index(spec)
    listed = {str(folder / name) for name in index["shards"]}
    if gone := sorted(f for f in listed if not Path(f).is_file()):
        raise DataError(
            f"data.latents: {len(gone)} shard(s) listed in {folder / INDEX_FILE} are missing (first: "
            f"{gone[0]}); re-cache with scripts/cache_latents.py --restart"
        )
    found = list_shards(spec)
    if other := [f for f in found if f not in listed]:
        raise DataError(
            f"data.latents: {len(other)} tar(s) in {folder} are not listed in its {INDEX_FILE} (first: "
            f"{other[0]}), so nothing says which tokenizer made them: remove them, or cache into an "
            f"empty folder"
        )
    return found, index["latents"]["tokenizer"]["sha256"]


def check_latents(shards: str, tok, image_size: int) -> dict[str, Any]:
    """The cache's index.json, after checking it was made by `tok` at `image_size` and is complete."""
    folder, index = latent_index(shards)
    meta = index["latents"]
    mine, theirs = tokenizer_identity(tok), meta["tokenizer"]
    if theirs["sha256"] != mine["sha256"]:
        raise DataError(
            f"data.latents: the latents in {folder} were made by image tokenizer '{theirs['name']}' (sha256 "
            f"{theirs['sha256'][:12]}), this run uses '{mine['name']}' (sha256 {mine['sha256'][:12]}): set "
            f"image_tokenizer to the one that made them, or re-cache with `scripts/cache_latents.py --tokenizer "
            f"<this run's image_tokenizer>`"
        )
    if meta["image_size"] != image_size:
        raise DataError(
            f"data.latents: the latents in {folder} encode {meta['image_size']}-pixel images, this "
            f"run has data.image_size={image_size}: match it or re-cache with --image-size "
            f"{image_size}"
        )
    return index
