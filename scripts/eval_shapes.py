#!/usr/bin/env python
"""Prompt following on shapes: accuracy of generated images against their captions, per number of steps.

    python scripts/eval_shapes.py --model runs/shapes_tiny/release --steps 1 2 4 8
    python scripts/eval_shapes.py --model runs/shapes_imm/release --model runs/shapes_fm/release --steps 1 2 4 8 16 32

The judge is the analytic checker `mmgen.data.shapes_check` (colour blobs, shape by template IoU, size by
area, relation by centroids). Its own accuracy on real procedural images of the same prompts is reported
first, so its verdicts can be trusted. Prompts are the captions of held-out (split=test) shapes images.
Writes results/eval_shapes.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mmgen.bench import save_json
from mmgen.cli import check_option, cli_main, output_folder
from mmgen.config import ShapesConfig
from mmgen.config.schema import AT_LEAST_1, MAX_SAMPLER_STEPS, Range
from mmgen.data.shapes import ShapesGenerator
from mmgen.data.shapes_check import accuracy, check
from mmgen.sampling.grid import save_grid
from mmgen.sampling.pipeline import MMGenPipeline

REPO = Path(__file__).resolve().parents[1]


def held_out(n: int, image_size: int) -> tuple[list[str], list[np.ndarray]]:
    gen = ShapesGenerator(ShapesConfig(split="test", image_size=image_size))
    pairs = [gen.pair(i) for i in range(n)]
    return [p[1] for p in pairs], [p[0] for p in pairs]


def evaluate(pipe: MMGenPipeline, prompts: list[str], steps: int, guidance: float, batch: int, seed: int):
    t0 = time.perf_counter()
    images = pipe.text_to_image(prompts, batch=batch, seed=seed, steps=steps, guidance=guidance)
    dt = time.perf_counter() - t0
    acc = accuracy([check(im, p) for im, p in zip(images, prompts)])
    return acc, images, dt


@cli_main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="release folder(s)")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--n", type=int, default=200, help="held-out prompts")
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default=str(REPO / "results" / "eval_shapes.json"))
    args = ap.parse_args()
    for flag, value, allowed in (("--n", args.n, AT_LEAST_1), ("--batch", args.batch, AT_LEAST_1),
                                 *(("--steps", n, Range(1, MAX_SAMPLER_STEPS)) for n in args.steps)):  # fmt: skip
        check_option(flag, value, allowed)
    output_folder(Path(args.out).parent, "--out (its folder)")
    if args.threads:
        torch.set_num_threads(args.threads)

    report: dict = {"n_prompts": args.n, "guidance": args.guidance, "models": {}}
    first = MMGenPipeline.from_pretrained(args.model[0])
    prompts, real = held_out(args.n, first.model.config.image_size)
    judge = accuracy([check(im, p) for im, p in zip(real, prompts)])
    report["checker_on_real_images"] = judge
    print(f"checker on {args.n} real held-out images: {judge['correct']:.1%} fully correct "
          f"(shape {judge['shape']:.1%}, colour {judge['color']:.1%}, size {judge['size']:.1%})")  # fmt: skip
    for path in args.model:
        pipe = first if path == args.model[0] else MMGenPipeline.from_pretrained(path)
        kind = pipe.model.config.image_objective
        rows = {}
        for n in args.steps:
            acc, images, dt = evaluate(pipe, prompts, n, args.guidance, args.batch, args.seed)
            rows[str(n)] = {**acc, "seconds": round(dt, 2), "seconds_per_image": round(dt / len(prompts), 4)}
            print(f"{path} ({kind}) N={n:3d}: correct {acc['correct']:.1%} | colour {acc['color']:.1%} shape "
                  f"{acc['shape']:.1%} size {acc['size']:.1%} count {acc['count']:.1%} relation "
                  f"{acc.get('relation', float('nan')):.1%} | {dt / len(prompts) * 1000:.0f} ms/image")  # fmt: skip
            save_grid(images[:32], Path(args.out).with_suffix("") / f"{Path(path).parent.name}-N{n}.png", ncol=8)
        report["models"][path] = {"objective": kind, "by_steps": rows}
    save_json(report, args.out)


if __name__ == "__main__":
    main()
