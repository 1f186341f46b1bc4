#!/usr/bin/env python
"""Generation speed of the prompting loop, each comparison measured in one process (alternating runs).

    python scripts/bench_generate.py                                  # tiny preset (random weights), CPU
    python scripts/bench_generate.py --model runs/shapes_tiny/release # a trained release
    python scripts/bench_generate.py --preset small --device cuda

1. images/s at N = 1, 2, 4, 8 network evaluations per image (a batch of shapes captions, CFG on: each
   evaluation is one forward of conditional + unconditional copies), prompt prefill and VAE decode included;
2. the prefix KV cache against recomputing the prefix at every sampler step, for a long text prefix
   (cached: one prefill, then N forwards over the image tokens only; recompute: N x (prefill + image forward));
3. text decoding tokens/s with the KV cache against a full forward over the growing sequence per token
   (end to end: new tokens / time including the prompt's prefill).

Timings depend on the weights only through the number of tokens, so random weights (the default) measure the
same work as a trained model; with --model the release's own sizes and context are used.
Prints a table and writes results/bench_generate.json. The measurements are mmgen/eval/generation.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mmgen.config.schema import GUIDANCE
from mmgen.eval.generation import images_per_s, prefix_cache_speedup, text_decoding
from mmgen.eval.presets import random_pipe
from mmgen.eval.timing import device_name
from mmgen.files import save_json
from mmgen.sampling.pipeline import MMGenPipeline

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="release folder (default: random weights of --preset)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--context", type=int, default=2048, help="context of the random-weight model")
    ap.add_argument("--batch", type=int, default=16, help="images per batch for images/s")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--prefix-tokens", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(REPO / "results" / "bench_generate.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.model:
        pipe = MMGenPipeline.from_pretrained(args.model, device=device)
    else:
        pipe = random_pipe(args.preset, args.context, device)
    c = pipe.model.config
    prefix = min(args.prefix_tokens, c.max_seq_len - c.image_tokens * 2 - 8)
    new = min(args.new_tokens, c.max_seq_len - prefix - 2)

    imgs = images_per_s(pipe, args.batch, args.steps, args.repeats, device)
    for r in imgs:
        print(
            f"N = {r['steps']}: {r['images_per_s']:8.1f} images/s ({r['seconds_per_batch']:.3f} s per batch of {args.batch})"
        )
    pc = prefix_cache_speedup(pipe, prefix, 4, args.repeats, device)
    print(
        f"prefix cache ({pc['prefix_tokens']} prefix tokens, N = 4): cached {pc['cached_s']:.3f} s, recompute "
        f"{pc['recompute_s']:.3f} s -> {pc['speedup']:.2f}x"
    )
    td = text_decoding(pipe, prefix, new, args.repeats, device)
    print(
        f"text decoding ({td['prompt_tokens']} prompt + {td['new_tokens']} new tokens): cached "
        f"{td['cached_tokens_per_s']:.1f} tok/s, uncached {td['uncached_tokens_per_s']:.1f} tok/s -> {td['speedup']:.2f}x"
    )
    out = {
        "benchmark": "generation speed: images/s per N, prefix KV cache vs recompute, cached vs uncached text decoding",
        "device": device_name(device),
        "model": args.model or f"{args.preset} preset, random weights, context {c.max_seq_len}",
        "params": sum(p.numel() for p in pipe.model.parameters()),
        "image_tokens": c.image_tokens,
        "batch": args.batch,
        "repeats": args.repeats,
        "guidance": GUIDANCE,
        "threads": torch.get_num_threads(),
        "images_per_s": imgs,
        "prefix_cache": pc,
        "text_decoding": td,
    }
    save_json(out, args.out)


if __name__ == "__main__":
    main()
