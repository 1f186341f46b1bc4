#!/usr/bin/env python
"""Text perplexity of a model on held-out documents (captions given their images, or any text).

    python scripts/eval_text.py --model runs/flickr8k/release --shards data/shards/flickr8k-test

Every image in the documents enters as clean context (no noisy copy), so the number is the perplexity of
the text given everything before it, per text token (words and </s>; <boi>/<eoi> are not scored). `--drop-images` removes every image from the documents: the same captions without
what they describe. The gap between the two numbers bounds what the model reads from the images from above:
without images a caption also ends where training documents put <boi>, so its </s> costs more.
Writes JSON to --out (default: text_eval.json, or text_eval_noimages.json, in the run folder of --model).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from mmgen.cli import cli_main
from mmgen.data.packing import Packer, PackSpec
from mmgen.data.plan import IGNORE, KIND_CLEAN
from mmgen.data.shards import ShardStream, Split
from mmgen.files import save_json
from mmgen.flowmap import clean_input
from mmgen.models.patches import patchify, to_dense
from mmgen.sampling.release import load_release
from mmgen.train.build import clean_latents


@torch.no_grad()
@cli_main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--limit", type=int, default=0, help="documents (0 = all)")
    ap.add_argument("--drop-images", action="store_true", help="score the text without its images")
    ap.add_argument("--shuffle-images", action="store_true", help="control: images of the document half the set away")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    folder = Path(args.model)
    model, text, image = load_release(folder)  # every file checked, named in the error if it is bad
    model, image = model.eval(), image.eval()
    c = model.config
    packer = Packer(text, PackSpec.from_config(c, rows=4))
    items = ShardStream(args.shards, Split(), shuffle=False, epochs=1).items(0)
    if args.shuffle_images:
        # in key order a photo's captions are adjacent (keys name the photo), so a shift of half the set pairs
        # every document with another photo, whatever order the shards were written in
        items = sorted(items, key=lambda it: it.doc.key)
        pics = [it.doc.images for it in items]
        for i, it in enumerate(items):
            theirs = pics[(i + len(items) // 2) % len(items)]
            if any(a.data == b.data for a, b in zip(it.doc.images, theirs)):
                sys.exit(f"eval_text: --shuffle-images would give {it.doc.key} its own photo")
            other = iter(theirs)
            it.doc.segments = [s if isinstance(s, str) else next(other, s) for s in it.doc.segments]

    def context_only(it):
        for n, item in enumerate(it):
            if args.limit and n >= args.limit:
                return
            for im in item.doc.images:
                im.loss = False
            if args.drop_images:
                item.doc.segments = [s for s in item.doc.segments if isinstance(s, str)]
            yield item

    nll, count, docs = 0.0, 0, 0
    for b in packer.batches(context_only(items), keep_last=True):
        if len(b.images):  # the clean copies' values exactly as in training: c_in(0) x0
            x0 = clean_latents(b, image, c.sigma_d, torch.device("cpu"))
            x_in = patchify(clean_input(x0, c.sigma_d), c.patch_size)
            b.image_tokens = to_dense(x_in, b.image, b.patch, b.kind == KIND_CLEAN)
        # caption words and </s> only: <boi>/<eoi> targets exist only when images are kept, and are easy
        where = (b.labels != IGNORE) & (b.labels != c.boi_token_id) & (b.labels != c.eoi_token_id)
        b.t = b.s = torch.zeros(b.shape)
        out = model(**b.model_inputs(), text_positions=where)
        nll += float(torch.nn.functional.cross_entropy(out.logits.float(), b.labels[where], reduction="sum"))
        count += int(where.sum())
        docs += len(b.keys)
    ppl = math.exp(nll / max(count, 1))
    res = {
        "model": str(folder),
        "shards": args.shards,
        "images": "none" if args.drop_images else "shuffled" if args.shuffle_images else "own",
        "documents": docs,
        "text_tokens": count,
        "nll_per_token": nll / max(count, 1),
        "perplexity": ppl,
    }
    print(json.dumps(res, indent=1))
    out = (
        Path(args.out)
        if args.out
        else folder.parent
        / (
            "text_eval_noimages.json"
            if args.drop_images
            else "text_eval_shuffled.json"
            if args.shuffle_images
            else "text_eval.json"
        )
    )
    save_json(res, out)


if __name__ == "__main__":
    main()
