"""Quality against the number of sampling steps: the loop that scripts/eval_shapes.py and scripts/eval_cifar.py
share. For each release, each point of a sweep (a prompt set, a number of network evaluations N, sampling
options) samples one image per prompt, timed; a measure turns the images into a result row and a printed line,
and a sheet of the images is saved beside the results.

    for path, pipe, kind in releases(paths):
        rows = sweep(pipe, [Point(n, prompts, {"guidance": g}, sheet=f"{kind}-N{n}") for n in steps], measure,
                     sheets=out_folder, batch=50)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmgen.sampling.grid import save_grid
from mmgen.sampling.pipeline import MMGenPipeline


@dataclass(frozen=True)
class Point:
    """One point of a sweep: `prompts` sampled at `steps` network evaluations per image."""

    steps: int
    prompts: list[str]
    options: dict = field(default_factory=dict)  # further SamplingOptions: guidance, method, time_grid, ...
    label: dict = field(default_factory=dict)  # what else names the point in its row (prompt set, guidance)
    sheet: str = ""  # file name (no suffix) of its image sheet


# (point, images, seconds) -> (result row, printed line)
Measure = Callable[[Point, list[np.ndarray], float], tuple[dict, str]]


def sample(
    pipe: MMGenPipeline, prompts: list[str], steps: int, batch: int, seed: int = 0, **options
) -> tuple[list[np.ndarray], float]:
    """(images, seconds): one image per prompt at `steps` network evaluations; options: SamplingOptions."""
    t0 = time.perf_counter()
    images = pipe.text_to_image(prompts, batch=batch, steps=steps, seed=seed, **options)
    return images, time.perf_counter() - t0


def sweep(
    pipe: MMGenPipeline,
    points: list[Point],
    measure: Measure,
    sheets: Path,
    batch: int,
    seed: int = 0,
    pick: Callable[[list[np.ndarray]], list[np.ndarray]] = lambda images: images[:32],
) -> list[dict]:
    """The result row of every point, in order; prints each row's line and saves `pick(images)` as an 8-column
    sheet `sheets/<point.sheet>.png`."""
    rows = []
    for point in points:
        images, seconds = sample(pipe, point.prompts, point.steps, batch, seed, **point.options)
        row, line = measure(point, images, seconds)
        rows.append(row)
        print(line)
        save_grid(pick(images), sheets / f"{point.sheet}.png", ncol=8)
    return rows


def releases(paths: list[str], first: MMGenPipeline | None = None) -> Iterator[tuple[str, MMGenPipeline, str]]:
    """(path, pipeline, image objective) of each release folder, loaded one at a time; `first`: the pipeline of
    paths[0] when the caller has loaded it already."""
    for i, path in enumerate(paths):
        pipe = first if i == 0 and first is not None else MMGenPipeline.from_pretrained(path)
        yield path, pipe, pipe.model.config.image_objective
