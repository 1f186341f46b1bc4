#!/usr/bin/env python
"""Data throughput on the Flickr8k subset: documents/s of each reader, and training tokens/s from cached
latents vs encoding the images on the fly.

    OMP_NUM_THREADS=1 python scripts/bench_data.py            # writes results/bench_data.json

The subset ($MMGEN_DATA/flickr8k_subset, train split: one document per (photo, caption)) is written to a
temporary folder in each layout: the img2dataset tars, an image folder with metadata.jsonl (one caption per
photo), interleaved JSONL (three photos and their captions per document), the project's shards, and cached
latents (scripts/cache_latents.py's writer, from the img2dataset tars). A reader's rate is end to end: from
the files to model-ready images (decoded, centre-cropped, resized to --image-size; latents for the cache).

Training: two trainers of the same tiny model in this process, one reading the img2dataset tars and encoding
with the image tokenizer every step, one reading the cached latents; timed in alternating rounds of
--steps optimizer steps after a warm-up, and compared as tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mmgen.data.external import ReadOptions, open_layout
from mmgen.data.img2dataset import write_img2dataset
from mmgen.data.latent_cache import LatentCache
from mmgen.data.packing import to_model_pixels
from mmgen.data.shards import ShardStream, Split, write_shards
from mmgen.data.sources import flickr8k
from mmgen.eval.timing import device_name
from mmgen.files import save_json

REPO = Path(__file__).resolve().parents[1]


def write_layouts(tmp: Path, limit: int) -> dict[str, Path]:
    """The subset in every layout under `tmp`; returns the path of each."""
    docs = list(flickr8k("train", limit=limit))
    write_img2dataset(docs, tmp / "img2dataset", per_shard=500)
    write_shards(docs, tmp / "shards", prefix="flickr8k", max_count=500)
    photos: dict[str, tuple[bytes, str]] = {}
    for d in docs:  # one document per (photo, caption): the first caption of each photo
        photos.setdefault(d.images[0].meta["image"], (d.images[0].data, d.segments[0]))
    folder = tmp / "imagefolder"
    folder.mkdir()
    rows = []
    for name, (data, caption) in photos.items():
        (folder / name).write_bytes(data)
        rows.append(json.dumps({"file_name": name, "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    names = list(photos)
    lines = []
    for a in range(0, len(names) - 2, 3):
        group = names[a : a + 3]
        texts, images = [], []
        for n in group:  # photo, then its caption
            texts += [None, photos[n][1]]
            images += [f"imagefolder/{n}", None]
        lines.append(json.dumps({"id": f"flickr-{a // 3}", "texts": texts, "images": images}))
    (tmp / "interleaved.jsonl").write_text("\n".join(lines) + "\n")
    return {
        "img2dataset": tmp / "img2dataset",
        "imagefolder": folder,
        "jsonl": tmp / "interleaved.jsonl",
        "shards": tmp / "shards",
    }


def reader_rate(name: str, path: Path, size: int) -> dict:
    """Documents and images per second of one full pass, to model-ready pixels (or latents)."""
    t0 = time.perf_counter()
    if name in ("shards", "latents"):
        stream = ShardStream(path, Split(), shuffle=False, epochs=1)
    else:
        stream = open_layout(name, str(path), ReadOptions(size, size), shuffle=False, epochs=1)
    docs = images = 0
    for item in stream.items(0):
        for im in item.doc.images:
            if im.latents is None:
                to_model_pixels(im, size)
            images += 1
        docs += 1
    dt = time.perf_counter() - t0
    return {
        "documents": docs,
        "images": images,
        "seconds": round(dt, 2),
        "documents_per_s": round(docs / dt, 1),
        "images_per_s": round(images / dt, 1),
    }


def trainer(name: str, data: list[str], args: argparse.Namespace, tmp: Path):
    from mmgen.config import RunConfig, load_config
    from mmgen.train.loop import Trainer

    cfg = load_config(
        RunConfig,
        REPO / "configs" / "train" / "flickr8k.yaml",
        [
            f"image_tokenizer={args.tokenizer}",
            f"model.depth={args.depth}",
            f"data.image_size={args.image_size}",
            f"data.rows={args.rows}",
            "data.shuffle_buffer=64",
            f"train.output_dir={tmp / name}",
            "train.steps=100000",
            "train.sample_every=0",
            "train.ckpt_every=0",
            "objective.imm.warm_start_steps=0",
            *data,
        ],
    )
    t = Trainer(cfg, resume="none")
    return t, iter(t.data)


def time_steps(t, it, steps: int) -> tuple[float, int]:
    """(seconds, tokens) of `steps` optimizer steps, reading the data included."""
    t0, tokens = time.perf_counter(), 0
    for _ in range(steps):
        b = next(it)
        tokens += int((b["doc"] >= 0).sum())
        t.train_step([b])
    return time.perf_counter() - t0, tokens


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=0, help="Flickr8k train documents (photo, caption) to write; 0 = all")
    ap.add_argument("--tokenizer", default="tokenizers/image/cifar_kl.yaml", help="image tokenizer recipe or folder")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--depth", type=int, default=4, help="model depth of the training comparison")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per timed round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per path")
    ap.add_argument("--out", default=str(REPO / "results" / "bench_data.json"))
    args = ap.parse_args(argv)
    from mmgen.tokenizer_study.train import ensure_image_tokenizer

    os.chdir(REPO)  # tokenizer paths in configs are relative to the repository
    tok = ensure_image_tokenizer(args.tokenizer)
    res: dict = {
        "device": device_name(torch.device("cpu")),
        "torch": torch.__version__,
        "args": vars(args),
        "load_average_1min_at_start": os.getloadavg()[0],
    }  # other jobs on the machine add noise
    with tempfile.TemporaryDirectory(prefix="bench_data_") as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        paths = write_layouts(tmp, args.limit)
        res["write_layouts_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        lc = LatentCache(tmp / "latents", tok, args.image_size, source="img2dataset", shard_size=500, batch_size=64)
        stream = open_layout(
            "img2dataset",
            str(paths["img2dataset"]),
            ReadOptions(args.image_size, args.image_size),
            shuffle=False,
            epochs=1,
        )
        index = lc.run(stream.items(0))
        dt = time.perf_counter() - t0
        res["cache_latents"] = {
            "documents": index["samples"],
            "skipped": index["skipped"],
            "seconds": round(dt, 2),
            "documents_per_s": round(index["samples"] / dt, 1),
        }
        paths["latents"] = tmp / "latents"
        res["readers"] = {name: reader_rate(name, p, args.image_size) for name, p in paths.items()}
        for name, r in res["readers"].items():
            print(f"{name:12s} {r['documents_per_s']:8.1f} documents/s {r['images_per_s']:8.1f} images/s")
        paths_cfg = {
            "on_the_fly": ["data.source=img2dataset", f"data.path={paths['img2dataset']}"],
            "cached": ["data.source=shards", f"data.shards={paths['latents']}", "data.latents=true"],
        }
        runs = {name: trainer(name, data, args, tmp) for name, data in paths_cfg.items()}
        for t, it in runs.values():
            time_steps(t, it, 2)  # warm-up: allocator, first batches
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, (t, it) in runs.items():
                dt, tokens = time_steps(t, it, args.steps)
                rates[name].append(tokens / dt)
        res["training"] = {
            name: {
                "tokens_per_s_median": round(statistics.median(r), 1),
                "tokens_per_s_rounds": [round(x, 1) for x in r],
            }
            for name, r in rates.items()
        }
        res["training"]["cached_over_on_the_fly"] = round(
            res["training"]["cached"]["tokens_per_s_median"] / res["training"]["on_the_fly"]["tokens_per_s_median"], 2
        )
        res["training"]["params"] = runs["cached"][0].params_total
    print(json.dumps(res["training"], indent=1))
    save_json(res, args.out)
    return res


if __name__ == "__main__":
    main()
