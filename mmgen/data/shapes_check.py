"""An analytic judge for shapes images: does an image show what its caption asks for?

For every palette colour the checker takes the pixels close to it, splits them into connected blobs and, for
each blob big enough to be a shape, estimates the radius from its area and picks the shape whose rendered
template (same centre, same area) overlaps the blob best (IoU). Size is the nearer of the two radii; the
relation of two objects is read off their centroids exactly as the data generator defines it.

    verdict = check(image, "a small red circle above a large blue square")
    verdict.correct, verdict.scores   # all attributes right / per-attribute results

Its own accuracy on real procedural images is measured by `scripts/eval_shapes.py` (and a test), so its
verdicts on generated images can be trusted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmgen.config import ShapesConfig
from mmgen.data.shapes import PALETTE, SHAPES, SIZE_RADIUS, _shape_mask, parse_caption, relation_of

MIN_AREA_FRAC = 0.012  # blobs smaller than this fraction of the image are noise (a small circle is ~0.035)
MIN_IOU = 0.3  # a blob no shape template fits (e.g. a fringe of anti-aliased edge pixels) is not an object
DEFAULT_COLORS = tuple(ShapesConfig().colors)


@dataclass
class Blob:
    color: str
    area: float  # fraction of the image
    center: tuple[float, float]  # (x, y) in [0, 1]
    shape: str = ""
    size: str = ""
    iou: float = 0.0


@dataclass
class Verdict:
    correct: bool
    scores: dict[str, bool] = field(default_factory=dict)  # count, color, shape, size, relation
    found: list[Blob] = field(default_factory=list)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask (list of boolean masks)."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    comps = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp = np.zeros_like(mask)
        stack = [(y0, x0)]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            comp[y, x] = True
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack.append((yy, xx))
        comps.append(comp)
    return comps


_AREA_PER_R2 = {"circle": np.pi, "square": np.pi, "diamond": np.pi, "triangle": 2.6}  # area / radius^2


def _classify(comp: np.ndarray, blob: Blob, shapes: tuple[str, ...]) -> None:
    S = comp.shape[0]
    coords = (np.arange(S) + 0.5) / S
    xx, yy = np.meshgrid(coords, coords)
    best = (-1.0, "", 0.0)
    for shape in shapes:
        r = np.sqrt(blob.area / _AREA_PER_R2[shape])
        cx, cy = blob.center
        if shape == "triangle":
            cy = cy - (2 / 15) * r  # centroid at 2/3 of the height from the apex: apex cy - 1.2 r, base cy + 0.8 r
        tmpl = _shape_mask(shape, xx, yy, cx, cy, r)
        iou = (tmpl & comp).sum() / max(1, (tmpl | comp).sum())
        if iou > best[0]:
            best = (iou, shape, r)
    blob.iou, blob.shape = best[0], best[1]
    r = best[2]
    blob.size = min(SIZE_RADIUS, key=lambda k: abs(SIZE_RADIUS[k] - r))


def find_objects(
    image: np.ndarray,
    colors: tuple[str, ...] = DEFAULT_COLORS,
    shapes: tuple[str, ...] = SHAPES,
    background: tuple[int, int, int] = (0, 0, 0),
) -> list[Blob]:
    """Blobs of palette colours in an (S, S, 3) uint8 image, largest first."""
    img = image.astype(np.float32)
    S = img.shape[0]
    names = list(colors)
    refs = np.array([PALETTE[c] for c in names] + [background], dtype=np.float32)  # [K + 1, 3]
    dist = np.linalg.norm(img[:, :, None, :] - refs[None, None], axis=-1)  # [S, S, K + 1]
    nearest = dist.argmin(-1)
    close = dist.min(-1) < 90.0  # far from every reference colour: an unclear pixel, counted as nothing
    blobs = []
    for k, name in enumerate(names):
        for comp in _components((nearest == k) & close):
            area = comp.sum() / S**2
            if area < MIN_AREA_FRAC:
                continue
            ys, xs = np.nonzero(comp)
            blob = Blob(name, float(area), (float((xs.mean() + 0.5) / S), float((ys.mean() + 0.5) / S)))
            _classify(comp, blob, shapes)
            if blob.iou >= MIN_IOU:
                blobs.append(blob)
    return sorted(blobs, key=lambda b: -b.area)


def check(image: np.ndarray, caption: str, colors: tuple[str, ...] = DEFAULT_COLORS) -> Verdict:
    """Judge one image against its shapes caption (colors: the palette of the data set)."""
    want = parse_caption(caption)
    if want is None:
        raise ValueError(
            f"not a shapes caption: {caption!r} (expected e.g. 'a small red circle above a large blue square')"
        )
    found = find_objects(image, colors)
    objs = want["objects"]
    scores = {"count": len(found) == len(objs)}
    matched: list[Blob | None] = []
    pool = list(found)
    for o in objs:  # match by colour first (then shape), each blob used once
        cands = [b for b in pool if b.color == o["color"]]
        cands.sort(key=lambda b: (b.shape != o["shape"], -b.area))
        m = cands[0] if cands else None
        if m is not None:
            pool.remove(m)
        matched.append(m)
    scores["color"] = all(m is not None for m in matched)
    scores["shape"] = all(m is not None and m.shape == o["shape"] for m, o in zip(matched, objs))
    scores["size"] = all(m is not None and m.size == o["size"] for m, o in zip(matched, objs))
    if want["relation"] is not None:
        ok = all(m is not None for m in matched)
        scores["relation"] = (
            ok and relation_of({"center": matched[0].center}, {"center": matched[1].center}) == want["relation"]
        )
    return Verdict(all(scores.values()), scores, found)


def accuracy(verdicts: list[Verdict]) -> dict[str, Any]:
    """Fraction fully correct, and per attribute (relation over the two-object prompts only)."""
    out: dict[str, Any] = {
        "n": len(verdicts),
        "correct": float(np.mean([v.correct for v in verdicts])) if verdicts else 0.0,
    }
    for key in ("count", "color", "shape", "size", "relation"):
        vals = [v.scores[key] for v in verdicts if key in v.scores]
        if vals:
            out[key] = float(np.mean(vals))
    return out
