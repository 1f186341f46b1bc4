#!/usr/bin/env python
"""CIFAR-10 quality vs steps: prompted-class accuracy and Frechet distance of generated images, caption
accuracy, and sampling cost, for IMM and flow-matching models side by side.

    python scripts/eval_cifar.py --train-classifier          # once: the in-project judge (states its accuracy)
    python scripts/eval_cifar.py                             # the judge's accuracy and the real-image FD floor
    python scripts/eval_cifar.py --model runs/cifar10_imm/release --model runs/cifar10_fm/release

Both metrics use a CIFAR-10 classifier trained by this project (mmgen/tokenizer_study/feature_net.py): its
accuracy on the prompted class, and the Frechet distance between its penultimate features of generated and
real test images. They are in-project metrics, not comparable to published accuracy/FID numbers. Captions:
the model continues a real test image with text; a caption is right when it names the image's class.
Writes results/cifar10/eval.json and results/cifar10/quality_vs_steps.png (with --out eval_<tag>.json: quality_vs_steps_<tag>.png).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from mmgen.bench import device_name, save_json
from mmgen.cli import check_option, cli_main
from mmgen.config.schema import AT_LEAST_0, AT_LEAST_1, GUIDANCE, TIME_GRID, TIME_GRIDS, Range
from mmgen.data.sources import CIFAR10_CLASSES, cifar10
from mmgen.sampling.grid import save_grid
from mmgen.sampling.pipeline import MMGenPipeline
from mmgen.tokenizer_study.feature_net import load_feature_net, train_feature_net
from mmgen.tokenizer_study.metrics import frechet_distance

REPO = Path(__file__).resolve().parents[1]
JUDGE = REPO / "results" / "cifar10" / "classifier"
CAPTION = re.compile(r"a photo of an? (\w+)")


def real_test(limit: int) -> tuple[np.ndarray, np.ndarray]:
    docs = list(cifar10("test"))
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(docs))[:limit]
    imgs = np.stack([docs[i].images[0].rgb() for i in pick])
    labels = np.array([docs[i].images[0].meta["label"] for i in pick])
    return imgs, labels


@torch.no_grad()
def judge(net, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes, penultimate features) of uint8 (N, 32, 32, 3) images."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    feats = torch.cat([net.features(b) for b in x.split(500)])
    return net.head(feats).argmax(1).numpy(), feats.numpy()


def generate(
    pipe: MMGenPipeline, per_class: int, steps: int, batch: int, seed: int = 0, **options
) -> tuple[np.ndarray, np.ndarray, float]:
    """per_class images of every class; options: SamplingOptions (guidance, method, time_grid)."""
    prompts = [f"a photo of a {c}" for c in CIFAR10_CLASSES for _ in range(per_class)]
    labels = np.repeat(np.arange(10), per_class)
    t0 = time.perf_counter()
    images = pipe.text_to_image(prompts, batch=batch, steps=steps, seed=seed, **options)
    return np.stack(images), labels, time.perf_counter() - t0


def captions(pipe: MMGenPipeline, images: np.ndarray, labels: np.ndarray, batch: int) -> tuple[float, list[str]]:
    texts = []
    for i in range(0, len(images), batch):
        res = pipe([[im] for im in images[i : i + batch]], max_images=0, max_new_tokens=8)
        texts += [r.text for r in res]
    names = [(CAPTION.search(t) or [None, None])[1] for t in texts]
    acc = float(np.mean([n == CIFAR10_CLASSES[y] for n, y in zip(names, labels)]))
    return acc, texts


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
    info = json.loads((JUDGE / "config.json").read_text())
    n_gen = 10 * args.per_class
    real_all, labels_all = real_test(10_000)  # the first --real are the reference, the rest give the floor
    real, real_labels = real_all[: args.real], labels_all[: args.real]
    pred, real_feats = judge(net, real)
    _, held = judge(net, real_all[args.real :])
    floor = [
        round(frechet_distance(held[k : k + n_gen], real_feats), 3) for k in range(0, len(held) - n_gen + 1, n_gen)
    ][:3]
    report: dict = {
        "machine": device_name(torch.device("cpu")) + f", torch {torch.__version__}",
        "judge": {"test_accuracy_real": round(float((pred == real_labels).mean()), 4), **info},
        "real_vs_real_fd": round(frechet_distance(real_feats[: len(real) // 2], real_feats[len(real) // 2 :]), 3),
        "real_floor_fd": floor,  # other real test images, as many as one generated point, against the reference
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
        f"{report['real_vs_real_fd']:.2f}; FD of {n_gen} other real images: {floor}"
    )
    out = Path(args.out or REPO / "results" / "cifar10" / ("eval.json" if args.model else "reference.json"))
    for path in args.model:
        pipe = MMGenPipeline.from_pretrained(path)
        kind = pipe.model.config.image_objective
        rows = {}
        for n in args.imm_steps if kind == "imm" else args.fm_steps:
            imgs, labels, dt = generate(
                pipe,
                args.per_class,
                n,
                args.batch,
                args.seed,
                guidance=args.guidance,
                method=args.sampler,
                time_grid=args.time_grid,
                guidance_interval=tuple(args.guidance_interval),
            )
            p, f = judge(net, imgs)
            rows[str(n)] = {
                "nfe": n,
                "class_accuracy": round(float((p == labels).mean()), 4),
                "frechet_distance": round(frechet_distance(f, real_feats), 3),
                "seconds_per_image": round(dt / len(imgs), 5),
            }
            print(
                f"{path} ({kind}) N={n:3d}: class acc {rows[str(n)]['class_accuracy']:.1%} FD "
                f"{rows[str(n)]['frechet_distance']:.2f} | {dt / len(imgs) * 1000:.1f} ms/image"
            )
            save_grid(list(imgs[:: args.per_class // 4 or 1][:40]), out.with_suffix("") / f"{kind}-N{n}.png", ncol=8)
        report["models"][path] = {"objective": kind, "by_steps": rows}
        if args.captions:  # --captions 0: images only
            cap_acc, texts = captions(pipe, real[: args.captions], real_labels[: args.captions], args.batch)
            print(f"{path}: caption accuracy {cap_acc:.1%} (e.g. {texts[:3]})")
            report["models"][path] |= {"caption_accuracy": round(cap_acc, 4), "caption_examples": texts[:10]}
    save_json(report, out)
    if report["models"]:
        plot(report, figure_path(out))


def figure_path(out: Path) -> Path:
    """results/cifar10/eval.json -> quality_vs_steps.png; eval_<tag>.json -> quality_vs_steps_<tag>.png."""
    tag = out.stem.removeprefix("eval").lstrip("_")
    return out.with_name(f"quality_vs_steps_{tag}.png" if tag else "quality_vs_steps.png")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    fig.suptitle(f"CIFAR-10, guidance {report.get('guidance', '?')}")
    for name, m in report["models"].items():
        xs = [r["nfe"] for r in m["by_steps"].values()]
        label = f"{m['objective'].upper()} ({Path(name).parent.name})"
        axes[0].plot(xs, [r["class_accuracy"] for r in m["by_steps"].values()], "o-", label=label)
        axes[1].plot(xs, [r["frechet_distance"] for r in m["by_steps"].values()], "o-", label=label)
    for ax, title in zip(
        axes, ["prompted-class accuracy (in-project judge)", "Frechet distance (in-project features)"]
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("network evaluations per image")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
