"""CIFAR-10 quality vs steps: prompted-class accuracy and Frechet distance of generated images, caption accuracy.

Both image metrics use a CIFAR-10 classifier trained by this project (mmgen/tokenizer/feature_net.py, the
*judge*): its accuracy on the prompted class, and the Frechet distance between its penultimate features of
generated and real test images. They are in-project metrics, not comparable to published accuracy/FID numbers.
Captions: the model continues a real test image with text; a caption is right when it names the image's class.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from mmgen.data.sources import CIFAR10_CLASSES, cifar10
from mmgen.eval.steps import Measure, Point, sample
from mmgen.sampling.pipeline import MMGenPipeline
from mmgen.tokenizer_study.metrics import frechet_distance

JUDGE = Path(__file__).resolve().parents[2] / "results" / "cifar10" / "classifier"
CAPTION = re.compile(r"a photo of an? (\w+)")


def real_test(limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 32, 32, 3), class labels) of `limit` test images in a fixed random order (seed 0)."""
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


def class_prompts(per_class: int) -> tuple[list[str], np.ndarray]:
    """per_class prompts naming every class in turn, and the class each names."""
    prompts = [f"a photo of a {c}" for c in CIFAR10_CLASSES for _ in range(per_class)]
    return prompts, np.repeat(np.arange(10), per_class)


def generate(
    pipe: MMGenPipeline, per_class: int, steps: int, batch: int, seed: int = 0, **options
) -> tuple[np.ndarray, np.ndarray, float]:
    """per_class images of every class; options: SamplingOptions (guidance, method, time_grid)."""
    prompts, labels = class_prompts(per_class)
    images, seconds = sample(pipe, prompts, steps, batch, seed, **options)
    return np.stack(images), labels, seconds


def captions(pipe: MMGenPipeline, images: np.ndarray, labels: np.ndarray, batch: int) -> tuple[float, list[str]]:
    """(accuracy, captions): the model's text after each image, right when it names the image's class."""
    texts = []
    for i in range(0, len(images), batch):
        res = pipe([[im] for im in images[i : i + batch]], max_images=0, max_new_tokens=8)
        texts += [r.text for r in res]
    names = [(CAPTION.search(t) or [None, None])[1] for t in texts]
    acc = float(np.mean([n == CIFAR10_CLASSES[y] for n, y in zip(names, labels)]))
    return acc, texts


def reference(net, n_real: int, n_gen: int) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """(report, real reference images, their labels, their judge features). The first n_real of 10000 test
    images are the reference; the rest give the floor: FDs of up to three disjoint draws of n_gen other real
    images (as many as one generated point) against the reference."""
    info = json.loads((JUDGE / "config.json").read_text())
    real_all, labels_all = real_test(10_000)
    real, real_labels = real_all[:n_real], labels_all[:n_real]
    pred, real_feats = judge(net, real)
    _, held = judge(net, real_all[n_real:])
    floor = [
        round(frechet_distance(held[k : k + n_gen], real_feats), 3) for k in range(0, len(held) - n_gen + 1, n_gen)
    ][:3]
    report = {
        "judge": {"test_accuracy_real": round(float((pred == real_labels).mean()), 4), **info},
        "real_vs_real_fd": round(frechet_distance(real_feats[: len(real) // 2], real_feats[len(real) // 2 :]), 3),
        "real_floor_fd": floor,
    }
    return report, real, real_labels, real_feats


def measure(name: str, net, real_feats: np.ndarray, per_class: int) -> Measure:
    """The quality-vs-steps measure of class-prompt points: class accuracy and FD under the judge, seconds."""

    def row(point: Point, images: list[np.ndarray], seconds: float) -> tuple[dict, str]:
        imgs, labels = np.stack(images), class_prompts(per_class)[1]
        pred, feats = judge(net, imgs)
        row = {
            "nfe": point.steps,
            "class_accuracy": round(float((pred == labels).mean()), 4),
            "frechet_distance": round(frechet_distance(feats, real_feats), 3),
            "seconds_per_image": round(seconds / len(imgs), 5),
        }
        line = (
            f"{name} N={point.steps:3d}: class acc {row['class_accuracy']:.1%} FD {row['frechet_distance']:.2f} | "
            f"{seconds / len(imgs) * 1000:.1f} ms/image"
        )
        return row, line

    return row


def figure_path(out: Path) -> Path:
    """results/cifar10/eval.json -> quality_vs_steps.png; eval_<tag>.json -> quality_vs_steps_<tag>.png."""
    tag = out.stem.removeprefix("eval").lstrip("_")
    return out.with_name(f"quality_vs_steps_{tag}.png" if tag else "quality_vs_steps.png")


def plot(report: dict, path: Path) -> None:
    """Class accuracy and FD against network evaluations per image, one line per model."""
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
