#!/usr/bin/env python
"""Encode every image once with the frozen image tokenizer; write shards whose images are `.npy` latents.

    python scripts/cache_latents.py --source img2dataset:/data/laion --tokenizer tokenizers/image/cifar_kl.yaml \\
        --image-size 32 --out data/shards/laion-latents
    accelerate launch scripts/train.py --config ... data.source=shards data.shards=data/shards/laion-latents \\
        data.latents=true

--source is `img2dataset:PATH`, `imagefolder:PATH`, `jsonl:PATH` (data/README.md), `shards:DIR` (shards of
prepare_data.py) or a named source (flickr8k, cifar10, mnist, shapes). Images are centre-cropped and resized
to --image-size, encoded --batch-size at a time, and written --shard-size documents per shard. The folder's
index.json records the tokenizer's identity (sha256 of weights and recipe); training with data.latents=true
refuses latents of another tokenizer (and any tar index.json does not list). Rerunning the same command
resumes after the last shard written (--limit counts the documents read before too); --restart removes the
old cache first. Bad samples are skipped, counted in index.json and reported.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from mmgen.cli import check_option, cli_main, output_folder
from mmgen.config.schema import AT_LEAST_0, AT_LEAST_1
from mmgen.data.external import add_read_args, read_items, read_options
from mmgen.data.latent_cache import LatentCache


@cli_main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--source", required=True, help="img2dataset:PATH, imagefolder:PATH, jsonl:PATH, shards:DIR or a name"
    )
    ap.add_argument("--tokenizer", required=True, help="image tokenizer: recipe .yaml (trained when missing) or folder")
    ap.add_argument(
        "--image-size", type=int, default=32, help="pixels a side before encoding (the run's data.image_size)"
    )
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--batch-size", type=int, default=64, help="images per encoder call")
    ap.add_argument("--shard-size", type=int, default=1000, help="documents per shard (the unit of resumption)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--prefix", default="latents")
    ap.add_argument("--split", default="train", choices=["train", "test"], help="named sources only")
    ap.add_argument(
        "--limit", type=int, default=0, help="documents to read (0 = all; a resumed run counts the ones read before)"
    )
    ap.add_argument("--restart", action="store_true", help="overwrite a cache in --out instead of resuming it")
    ap.add_argument(
        "--layout",
        default="caption_image",
        choices=["caption_image", "image_caption", "both"],
        help="order of a caption and its image in captioned-image documents",
    )
    add_read_args(ap)
    args = ap.parse_args(argv)
    for flag in ("--image-size", "--batch-size", "--shard-size"):
        check_option(flag, getattr(args, flag[2:].replace("-", "_")), AT_LEAST_1)
    check_option("--limit", args.limit, AT_LEAST_0)
    output_folder(args.out, "--out")

    from mmgen.tokenizer_study.train import ensure_image_tokenizer

    tok = ensure_image_tokenizer(args.tokenizer)
    opts = read_options(args, args.image_size)
    cache = LatentCache(
        args.out,
        tok,
        args.image_size,
        source=args.source,
        prefix=args.prefix,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        dtype=args.dtype,
        restart=args.restart,
        options=asdict(opts),
    )
    if cache.start:
        print(f"resuming {args.out}: {len(cache.state['shards'])} shards written, source index {cache.start}")
    left = max(1, args.limit - cache.read) if args.limit else 0  # run() stops at --limit exactly (0 reads all)
    items, total, unreported = read_items(args.source, opts, cache.start, args.split, left)
    t0 = time.perf_counter()
    bar = tqdm(items, total=total, initial=cache.start if total else 0, unit="doc", desc="cache", mininterval=1.0)
    index = cache.run(bar, unreported, limit=args.limit)
    bar.close()
    dt = time.perf_counter() - t0
    summary = {k: index[k] for k in ("samples", "skipped")} | {
        "shards": len(index["shards"]),
        "seconds": round(dt, 1),
        "threads": torch.get_num_threads(),
        "tokenizer": index["latents"]["tokenizer"]["name"],
        "sha256": index["latents"]["tokenizer"]["sha256"][:16],
    }
    print(json.dumps(summary))
    for key, why in index["skipped_examples"][:5]:
        print(f"  skipped {key}: {why}")
    print(
        f"train on it: data.source=shards data.shards={Path(args.out)} data.latents=true "
        f"image_tokenizer={args.tokenizer} data.image_size={args.image_size}"
    )
    return index


if __name__ == "__main__":
    main()
