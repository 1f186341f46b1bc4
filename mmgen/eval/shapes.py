"""Prompt following on shapes: held-out prompt sets and the judged accuracy of a pipeline on them.

The judge is the analytic checker `mmgen.data.shapes_check`. Prompts are captions of the test split; a
release trained with `data.shapes.holdout` never saw some colour-shape pairs, so its prompts split into
*seen* (every pair occurred in training) and *unseen* (at least one held-out pair).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmgen.config import ShapesConfig, read_yaml
from mmgen.data.shapes import ShapesGenerator
from mmgen.data.shapes_check import accuracy, check
from mmgen.eval.steps import Measure, Point, sample


def training_holdout(release: str | Path) -> list[str]:
    """The colour-shape pairs a release's training stream never drew (its run_config's data.shapes.holdout)."""
    run = Path(release) / "run_config.yaml"
    config = read_yaml(run) if run.is_file() else {}
    return list(((config.get("data") or {}).get("shapes") or {}).get("holdout") or [])


def prompt_set(n: int, image_size: int, holdout: list[str], unseen: bool) -> tuple[list[str], list[np.ndarray]]:
    """The first n test-split (caption, real image) pairs that use no held-out pair (unseen=False) or at least
    one (unseen=True). Fixed for a given n: the same prompts for every model and every run."""
    if unseen and not holdout:
        raise ValueError("unseen prompts need a holdout list (data.shapes.holdout of the release)")
    config = ShapesConfig(split="test", image_size=image_size, holdout=holdout)  # names a pair it cannot draw
    gen, pairs = ShapesGenerator(config), config.holdout_pairs
    prompts, images = [], []
    i = 0
    while len(prompts) < n:
        image, text, gt = gen.pair(i)
        i += 1
        if any((o["color"], o["shape"]) in pairs for o in gt["objects"]) == unseen:
            prompts.append(text)
            images.append(image)
    return prompts, images


def judged(images: list[np.ndarray], prompts: list[str]) -> dict[str, Any]:
    """The checker's accuracy of images against the prompts they were drawn for."""
    return accuracy([check(im, p) for im, p in zip(images, prompts)])


def judge(
    pipe, prompts: list[str], steps: int, guidance: float, batch: int = 50, seed: int = 0
) -> tuple[dict[str, Any], list[np.ndarray], float]:
    """(accuracy, images, seconds): one image per prompt at `steps` network evaluations, judged."""
    images, seconds = sample(pipe, prompts, steps, batch, seed, guidance=guidance)
    return judged(images, prompts), images, seconds


def measure(name: str) -> Measure:
    """The quality-vs-steps measure of shapes points (label: prompt set and guidance): the judged accuracy and
    the seconds, in a row and a line that starts with `name`."""

    def row(point: Point, images: list[np.ndarray], seconds: float) -> tuple[dict, str]:
        acc, n = judged(images, point.prompts), len(point.prompts)
        row = {**point.label, "steps": point.steps, **acc, "seconds": round(seconds, 2)}
        row["seconds_per_image"] = round(seconds / n, 4)
        line = (
            f"{name} {point.label['prompts']} g={point.label['guidance']:g} N={point.steps:3d}: correct "
            f"{acc['correct']:.1%} | colour {acc['color']:.1%} shape {acc['shape']:.1%} size {acc['size']:.1%} "
            f"count {acc['count']:.1%} relation {acc.get('relation', float('nan')):.1%} | "
            f"{seconds / n * 1000:.0f} ms/image"
        )
        return row, line

    return row


ACCURACIES = ("correct", "color", "shape", "size", "count", "relation")


def mean_over_seeds(rows: list[dict]) -> list[dict]:
    """Rows of one point (prompt set, guidance, N) sampled with several noise seeds -> one row per point with
    each accuracy's mean, its standard deviation over the seeds (ddof 1) and the per-seed values."""
    points: dict[tuple, list[dict]] = {}
    for r in rows:
        points.setdefault((r["prompts"], r["guidance"], r["steps"]), []).append(r)
    out = []
    for (prompts, guidance, steps), group in points.items():
        row: dict = {"prompts": prompts, "guidance": guidance, "steps": steps, "seeds": [r["seed"] for r in group]}
        for key in ACCURACIES:
            values = [r[key] for r in group if r.get(key) is not None]
            if values:
                row[key] = float(np.mean(values))
                row[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                row[f"{key}_per_seed"] = values
        out.append(row)
    return out
