#!/usr/bin/env python
"""Write a data source as webdataset tar shards of interleaved documents.

    python scripts/prepare_data.py --source shapes --limit 20000 --out data/shards/shapes-train
    python scripts/prepare_data.py --source cifar10 --split train --layout both --out data/shards/cifar10-train
    python scripts/prepare_data.py --source flickr8k --split test --out data/shards/flickr8k-test
    python scripts/prepare_data.py --source text:gutenberg --out data/shards/gutenberg

    python scripts/prepare_data.py --source img2dataset:/data/laion --out data/shards/laion
    python scripts/prepare_data.py --source imagefolder:photos --latents tokenizers/image/cifar_kl.yaml \
        --image-size 32 --out data/shards/photos-latents

Real data is read from $MMGEN_DATA (default ../shared/data); data in the layouts of data/README.md is read
from its path (`img2dataset:PATH`, `imagefolder:PATH`, `jsonl:PATH`). Bad samples are skipped, counted in
index.json and reported. `--latents TOKENIZER` writes cached latents, as scripts/cache_latents.py does
(a rerun resumes them; `--restart` starts over).
Prints and returns samples/s.

Documents are written in a seeded random order (`--shuffle-seed`; -1 keeps the source order). The readers
list files sorted, so CIFAR-10 would otherwise come class by class, and a shard would hold a single class:
a reader's shuffle buffer of one shard then fills whole micro-batches with one class. The shuffle holds the
documents in memory (CIFAR-10 train, PNG bytes: the script peaks at 354 MB resident).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from mmgen.cli import check_option, cli_main, output_folder
from mmgen.config.schema import AT_LEAST_0, AT_LEAST_1
from mmgen.data.external import LAYOUTS, ReadOptions, add_read_args, read_items, read_options
from mmgen.data.shards import Item, write_shards
from mmgen.errors import DataError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--source",
        required=True,
        help="shapes, cifar10, flickr8k, mnist, text:<corpus>, or "
        "img2dataset:PATH, imagefolder:PATH, jsonl:PATH, shards:DIR",
    )
    ap.add_argument("--split", default="train", choices=["train", "test"])
    ap.add_argument(
        "--layout",
        default="caption_image",
        choices=["caption_image", "image_caption", "both"],
        help="caption before the image, after it, or alternating (captioned image sources)",
    )
    ap.add_argument("--limit", type=int, default=0, help="documents to write (0 = all; shapes defaults to 10000)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--shard-size", type=int, default=1000, help="documents per shard")
    ap.add_argument("--prefix", default=None, help="shard file prefix (default: source-split)")
    ap.add_argument("--shuffle-seed", type=int, default=0, help="seed of the write order; -1 keeps the source order")
    ap.add_argument(
        "--image-size",
        type=int,
        default=0,
        help="LAYOUT:PATH sources: centre-crop and resize images to this (0 keeps the files' bytes)",
    )
    ap.add_argument(
        "--latents",
        default="",
        metavar="TOKENIZER",
        help="write latents of this image tokenizer (recipe or folder) instead of images; needs --image-size",
    )
    ap.add_argument(
        "--restart", action="store_true", help="with --latents: overwrite a cache in --out instead of resuming it"
    )
    add_read_args(ap)
    args = ap.parse_args(argv)
    check_option("--limit", args.limit, AT_LEAST_0)
    check_option("--shard-size", args.shard_size, AT_LEAST_1)
    output_folder(args.out, "--out")
    if args.latents and not args.image_size:
        raise DataError("--latents needs --image-size (the run's data.image_size)")
    return args


def documents(args: argparse.Namespace, opts: ReadOptions) -> tuple[Iterator[Item], Callable[[], list]]:
    """The source's items in write order (cursor index = position in it) and its late-skipped samples."""
    items, _, unreported = read_items(args.source, opts, split=args.split, limit=args.limit)
    first = next(items, None)  # fail early (missing data) before creating the output folder
    if first is None:
        raise DataError(
            f"--source {args.source} --split {args.split} holds no readable document; check the "
            f"source's files (skipped: {unreported()[:3]})"
        )
    items = itertools.chain([first], items)
    if args.shuffle_seed >= 0:
        items = list(items)
        random.Random(args.shuffle_seed).shuffle(items)
    return (Item(it.doc, 0, 0, i, it.skipped) for i, it in enumerate(items)), unreported


def write_latents(args: argparse.Namespace, opts: ReadOptions, prefix: str) -> tuple[dict, list]:
    """Cached latents, resumable as cache_latents.py's: the read options are part of what a resume compares."""
    from mmgen.data.latent_cache import LatentCache
    from mmgen.tokenizer_study.train import ensure_image_tokenizer

    items, unreported = documents(args, opts)
    options = asdict(opts) | {"split": args.split, "limit": args.limit, "shuffle_seed": args.shuffle_seed}
    cache = LatentCache(
        args.out,
        ensure_image_tokenizer(args.latents),
        args.image_size,
        source=args.source,
        prefix=prefix,
        shard_size=args.shard_size,
        restart=args.restart,
        options=options,
    )
    items = itertools.islice(items, cache.start, None)
    index = cache.run(tqdm(items, unit="doc", desc=prefix, mininterval=1.0), unreported)
    return index, index["skipped_examples"]


def write_images(args: argparse.Namespace, opts: ReadOptions, prefix: str) -> tuple[dict, list]:
    skipped: list[tuple[str, str]] = []
    items, unreported = documents(args, opts)

    def docs():
        for it in items:
            skipped.extend(it.skipped)
            yield it.doc
        skipped.extend(unreported())

    index = write_shards(
        tqdm(docs(), unit="doc", desc=prefix, mininterval=1.0), args.out, prefix=prefix, max_count=args.shard_size
    )
    index.update(skipped=len(skipped), skipped_examples=[list(s) for s in skipped[:50]])
    return index, skipped


@cli_main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    kind = args.source.partition(":")[0]
    name = kind if kind in (*LAYOUTS, "shards") else args.source.replace(":", "-").replace("/", "-")  # not the path
    prefix = args.prefix or f"{name}-{args.split}"
    opts = read_options(args, args.image_size)
    t0 = time.perf_counter()
    index, skipped = (write_latents if args.latents else write_images)(args, opts, prefix)
    dt = time.perf_counter() - t0
    index.update(seconds=round(dt, 2), samples_per_s=round(index["samples"] / dt, 1), shuffle_seed=args.shuffle_seed)
    print(
        json.dumps(
            {k: v for k, v in index.items() if k not in ("shards", "skipped_examples", "latents")}
            | {"shards": len(index["shards"])}
        )
    )
    for key, why in skipped[:5]:
        print(f"  skipped {key}: {why}")
    (Path(args.out) / "index.json").write_text(json.dumps(index, indent=1))
    return index


if __name__ == "__main__":
    main()
