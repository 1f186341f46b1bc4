#!/usr/bin/env python
"""Prompt following on shapes: accuracy of generated images against their captions, per number of steps.

    python scripts/eval_shapes.py --model runs/shapes_tiny/release --steps 1 2 4 8
    python scripts/eval_shapes.py --model runs/shapes_imm/release --model runs/shapes_fm/release --steps 1 2 4 8 16 32
    python scripts/eval_shapes.py --model releases/shapes --steps 1 4 --seed 0 1 2     # + the mean over noise seeds

The judge is the analytic checker `mmgen.data.shapes_check` (colour blobs, shape by template IoU, size by
area, relation by centroids). Its own accuracy on real procedural images of the same prompts is reported
first, so its verdicts can be trusted. Prompts are the captions of held-out (split=test) shapes images.
Writes results/eval_shapes.json (or --out) and prints a table. With several noise seeds every point is sampled
once per seed, and each model also gets `mean_over_seeds`: per point, the mean and standard deviation of each
accuracy over the seeds (one image per prompt and seed).
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace
from pathlib import Path

import torch

from mmgen.cli import check_option, cli_main, output_folder
from mmgen.config.schema import AT_LEAST_1, GUIDANCE, MAX_SAMPLER_STEPS, Range
from mmgen.errors import ConfigError
from mmgen.eval.shapes import judged, mean_over_seeds, measure, prompt_set, training_holdout
from mmgen.eval.steps import Point, releases, sweep
from mmgen.files import save_json
from mmgen.sampling.pipeline import MMGenPipeline

REPO = Path(__file__).resolve().parents[1]


@cli_main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="release folder(s)")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--n", type=int, default=200, help="held-out prompts")
    ap.add_argument("--n-unseen", type=int, default=100, help="prompts with a held-out pair (data.shapes.holdout)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[GUIDANCE])
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--seed", type=int, nargs="+", default=[0], help="noise seed(s)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default=str(REPO / "results" / "eval_shapes.json"))
    args = ap.parse_args()
    for flag, value, allowed in (
        ("--n", args.n, AT_LEAST_1),
        ("--batch", args.batch, AT_LEAST_1),
        *(("--steps", n, Range(1, MAX_SAMPLER_STEPS)) for n in args.steps),
    ):
        check_option(flag, value, allowed)
    if len(set(args.seed)) != len(args.seed):
        raise ConfigError(f"--seed {' '.join(map(str, args.seed))} names a seed twice; give each noise seed once")
    output_folder(Path(args.out).parent, "--out (its folder)")
    if args.threads:
        torch.set_num_threads(args.threads)

    holdout = sorted({pair for path in args.model for pair in training_holdout(path)})
    first = MMGenPipeline.from_pretrained(args.model[0])
    size = first.model.config.image_size
    sets = {"seen": prompt_set(args.n, size, holdout, unseen=False)}
    if holdout and args.n_unseen:
        sets["unseen"] = prompt_set(args.n_unseen, size, holdout, unseen=True)
    report: dict = {
        "n_prompts": args.n,
        "guidance": args.guidance,
        "holdout": holdout,
        "models": {},
        "prompt_sets": {k: len(v[0]) for k, v in sets.items()},
    }
    for name, (prompts, real) in sets.items():
        real_acc = judged(real, prompts)
        report.setdefault("checker_on_real_images", {})[name] = real_acc
        print(
            f"checker on {len(prompts)} real held-out images ({name} pairs): {real_acc['correct']:.1%} fully "
            f"correct (shape {real_acc['shape']:.1%}, colour {real_acc['color']:.1%}, size {real_acc['size']:.1%})"
        )
    sheets = Path(args.out).with_suffix("")
    for path, pipe, kind in releases(args.model, first):
        label = Path(path).parent.name if Path(path).name == "release" else Path(path).name  # runs/X/release
        points = [
            Point(n, prompts, {"guidance": g}, {"prompts": name, "guidance": g}, f"{label}-{name}-g{g:g}-N{n}")
            for (name, (prompts, _)), g, n in itertools.product(sets.items(), args.guidance, args.steps)
        ]
        entry: dict = {"objective": kind, "holdout": training_holdout(path), "results": []}
        for seed in args.seed:  # the first seed's sheets keep their names; later seeds' get a suffix
            tagged = [replace(p, sheet=p.sheet + (f"-seed{seed}" if seed != args.seed[0] else "")) for p in points]
            rows = sweep(pipe, tagged, measure(f"{path} ({kind}) seed {seed}"), sheets, args.batch, seed)
            entry["results"] += [{**row, "seed": seed} for row in rows]
        if len(args.seed) > 1:
            entry["mean_over_seeds"] = mean_over_seeds(entry["results"])
        report["models"][path] = entry
    save_json(report, args.out)


if __name__ == "__main__":
    main()
