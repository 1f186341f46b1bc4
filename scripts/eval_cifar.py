#!/usr/bin/env python
"""CIFAR-10 quality vs steps: prompted-class accuracy and Frechet distance of generated images, caption
accuracy, and sampling cost, for IMM and flow-matching models side by side.

    python scripts/eval_cifar.py --train-classifier          # once: the in-project judge (states its accuracy)
    python scripts/eval_cifar.py                             # the judge's accuracy and the real-image FD floor
    python scripts/eval_cifar.py --model runs/cifar10_imm/release --model runs/cifar10_fm/release

Both metrics use a CIFAR-10 classifier trained by this project (mmgen/tokenizer/feature_net.py): its
accuracy on the prompted class, and the Frechet distance between its penultimate features of generated and
real test images. They are in-project metrics, not comparable to published accuracy/FID numbers. Captions:
the model continues a real test image with text; a caption is right when it names the image's class.
Writes results/cifar10/eval.json and results/cifar10/quality_vs_steps.png (with --out eval_<tag>.json: quality_vs_steps_<tag>.png).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mmgen.cli import check_option, cli_main
from mmgen.config.schema import AT_LEAST_0, AT_LEAST_1, GUIDANCE, TIME_GRID, TIME_GRIDS, Range
from mmgen.eval.cifar import JUDGE, captions, class_prompts, figure_path, measure, plot, reference
from mmgen.eval.steps import Point, releases, sweep
from mmgen.eval.timing import device_name
from mmgen.files import save_json
from mmgen.tokenizer_study.feature_net import load_feature_net, train_feature_net

REPO = Path(__file__).resolve().parents[1]


@cli_main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="release folder(s)")
    ap.add_argument("--imm-steps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--fm-steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--per-class", type=int, default=50, help="generated images per class")
    ap.add_argument("--real", type=int, default=5000, help="real test images for the reference statistics")
    ap.add_argument("--captions", type=int, default=500, help="real test images to caption (0: none)")
    ap.add_argument("--guidance", type=float, default=GUIDANCE)
    ap.add_argument(
        "--sampler",
        choices=["pushforward", "euler", "restart"],
        default=None,
        help="default: pushforward for IMM, euler for flow matching",
    )
    ap.add_argument("--time-grid", choices=TIME_GRIDS, default=TIME_GRID)
    ap.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=[0.0, 1.0],
        metavar=("LO", "HI"),
        help="guide only the steps that start at t in [LO, HI]",
    )
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument(
        "--seed", type=int, default=0, help="noise seed of the generated images (other seeds give the metrics' spread)"
    )
    ap.add_argument("--train-classifier", action="store_true", help="train the judge (width 32, 8 epochs)")
    ap.add_argument("--out", default=None, help="default results/cifar10/eval.json (reference.json without --model)")
    args = ap.parse_args()
    for flag, value, allowed in (
        ("--per-class", args.per_class, AT_LEAST_1),
        ("--real", args.real, Range(2, 10_000)),
        ("--captions", args.captions, AT_LEAST_0),
        ("--batch", args.batch, AT_LEAST_1),
    ):
        check_option(flag, value, allowed)
    if args.train_classifier:
        net = train_feature_net(JUDGE, epochs=8, width=32)
        print(f"judge trained: {json.loads((JUDGE / 'config.json').read_text())}")
        if not args.model:
            return
    net = load_feature_net(JUDGE)
    n_gen = 10 * args.per_class
    ref, real, real_labels, real_feats = reference(net, args.real, n_gen)
    report: dict = {
        "machine": device_name(torch.device("cpu")) + f", torch {torch.__version__}",
        **ref,  # real_floor_fd: other real test images, as many as one generated point, against the reference
        "guidance": args.guidance,
        "sampler": args.sampler or "model default",
        "time_grid": args.time_grid,
        "guidance_interval": args.guidance_interval,
        "per_class": args.per_class,
        "seed": args.seed,
        "real": args.real,
        "captions": args.captions,
        "models": {},
    }
    print(
        f"judge: {report['judge']['test_accuracy_real']:.1%} on {len(real)} real test images; FD real/real halves "
        f"{report['real_vs_real_fd']:.2f}; FD of {n_gen} other real images: {report['real_floor_fd']}"
    )
    out = Path(args.out or REPO / "results" / "cifar10" / ("eval.json" if args.model else "reference.json"))
    options = dict(
        guidance=args.guidance,
        method=args.sampler,
        time_grid=args.time_grid,
        guidance_interval=tuple(args.guidance_interval),
    )
    prompts, _ = class_prompts(args.per_class)

    def sheet(images: list) -> list:  # a few images of every class
        return images[:: args.per_class // 4 or 1][:40]

    for path, pipe, kind in releases(args.model):
        steps = args.imm_steps if kind == "imm" else args.fm_steps
        points = [Point(n, prompts, options, sheet=f"{kind}-N{n}") for n in steps]
        judged = measure(f"{path} ({kind})", net, real_feats, args.per_class)
        rows = sweep(pipe, points, judged, out.with_suffix(""), args.batch, args.seed, sheet)
        report["models"][path] = {"objective": kind, "by_steps": {str(r["nfe"]): r for r in rows}}
        if args.captions:  # --captions 0: images only
            cap_acc, texts = captions(pipe, real[: args.captions], real_labels[: args.captions], args.batch)
            print(f"{path}: caption accuracy {cap_acc:.1%} (e.g. {texts[:3]})")
            report["models"][path] |= {"caption_accuracy": round(cap_acc, 4), "caption_examples": texts[:10]}
    save_json(report, out)
    if report["models"]:
        plot(report, figure_path(out))


if __name__ == "__main__":
    main()
