"""`shapes`: the embedded default data set. Procedural, no download, and checkable.

Each image holds one or two coloured shapes on a plain background. Its caption is generated from the ground
truth ("a small red circle above a large blue square"), and the ground truth travels with the image as JSON,
so a generated image can be checked against the prompt that asked for it (`mmgen/data/shapes_check.py`).

Documents mix three layouts so the model learns interleaving, not only caption-then-image:
caption -> image; image -> caption; and several images with text between them that refers back
("a small red circle <image> the same circle in blue <image>").

Sample i of a split is a pure function of (seed, split, i): any worker can produce any index, which makes
data order exact under resumption and multi-process splitting.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from mmgen.config import ShapesConfig
from mmgen.data.documents import Document, Image

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 205),
    "white": (235, 235, 235),
    "orange": (245, 140, 30),
    "cyan": (40, 210, 220),
}
# Radius as a fraction of the image side. Shapes are scaled to roughly equal area at equal radius.
SIZE_RADIUS = {"small": 0.11, "large": 0.19}
SHAPES = ("circle", "square", "triangle", "diamond")
RELATIONS = ("above", "below", "left of", "right of")
_SUPERSAMPLE = 4


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = r * 0.886  # same area as the circle: (2h)^2 = pi r^2
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r * 1.253  # area 2 (1.253 r)^2 = pi r^2
    if shape == "triangle":
        # upward triangle, apex at the top; y grows downwards in image coordinates
        top, bottom, half = cy - 1.2 * r, cy + 0.8 * r, 1.3 * r
        frac = (yy - top) / (bottom - top)
        return (yy >= top) & (yy <= bottom) & (np.abs(dx) <= frac * half)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def render(objects: list[dict[str, Any]], size: int, background: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Draw objects ({shape, color, center (x, y) in [0, 1], radius in [0, 1]}) -> (size, size, 3) uint8.

    Rendered at 4x and box-filtered, so edges are anti-aliased the same way at every size.
    """
    n = size * _SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n
    xx, yy = np.meshgrid(coords, coords)
    canvas = np.empty((n, n, 3), dtype=np.float32)
    canvas[:] = background
    for obj in objects:
        cx, cy = obj["center"]
        mask = _shape_mask(obj["shape"], xx, yy, cx, cy, obj["radius"])
        canvas[mask] = PALETTE[obj["color"]]
    out = canvas.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def relation_of(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Where `a` is relative to `b`, by the dominant axis of their centre offset."""
    dx = a["center"][0] - b["center"][0]
    dy = a["center"][1] - b["center"][1]
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "left of" if dx < 0 else "right of"


def _orient(a: dict[str, Any], b: dict[str, Any], wanted: str) -> None:
    """Move both centres by a symmetry of the unit square (a transpose, then a flip) so that `a` is `wanted`
    of `b`. Margins and the centre offset's length are kept, so a valid placement stays valid."""
    vertical = wanted in ("above", "below")
    if (relation_of(a, b) in ("above", "below")) != vertical:
        for o in (a, b):
            o["center"] = o["center"][::-1]
    if relation_of(a, b) != wanted:
        axis = 1 if vertical else 0
        for o in (a, b):
            o["center"][axis] = 1.0 - o["center"][axis]


def describe(obj: dict[str, Any]) -> str:
    return f"a {obj['size']} {obj['color']} {obj['shape']}"


def caption(gt: dict[str, Any]) -> str:
    """The English caption of a ground truth: 'a small red circle' or 'a small red circle above a ...'."""
    objs = gt["objects"]
    if len(objs) == 1:
        return describe(objs[0])
    return f"{describe(objs[0])} {gt['relation']} {describe(objs[1])}"


_OBJ = r"a (\w+) (\w+) (\w+)"
_CAPTION_RE = re.compile(rf"^{_OBJ}(?: (above|below|left of|right of) {_OBJ})?$")


def parse_caption(text: str) -> dict[str, Any] | None:
    """Inverse of `caption` (without positions): {objects: [{shape, color, size}], relation} or None."""
    m = _CAPTION_RE.match(text.strip().lower())
    if m is None:
        return None
    g = m.groups()
    objs = [{"size": g[0], "color": g[1], "shape": g[2]}]
    if g[3] is not None:
        objs.append({"size": g[4], "color": g[5], "shape": g[6]})
    for o in objs:
        if o["size"] not in SIZE_RADIUS or o["color"] not in PALETTE or o["shape"] not in SHAPES:
            return None
    return {"objects": objs, "relation": g[3]}


class ShapesGenerator:
    """Deterministic generator of ground truths, images and documents for one `ShapesConfig`."""

    def __init__(self, cfg: ShapesConfig):
        unknown = [s for s in cfg.shapes if s not in SHAPES] + [c for c in cfg.colors if c not in PALETTE]
        unknown += [s for s in cfg.sizes if s not in SIZE_RADIUS]
        if unknown:
            raise ValueError(
                f"shapes config names unknown values {unknown}; shapes: {SHAPES}, colors: {tuple(PALETTE)}, "
                f"sizes: {tuple(SIZE_RADIUS)}"
            )
        self.cfg = cfg
        self.background = tuple(cfg.background)
        self._split = {"train": 0, "test": 1}[cfg.split]
        self._holdout = cfg.holdout_pairs

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, self._split, index])

    # ------------------------------------------------------------------ ground truth
    def drawable(self, color: str, shape: str) -> bool:
        """False for a held-out (colour, shape) pair in the train split (`ShapesConfig.holdout`)."""
        return self._split != 0 or (color, shape) not in self._holdout

    def _attributes(self, rng: np.random.Generator) -> dict[str, Any]:
        c = self.cfg
        while True:  # held-out pairs are redrawn (the train split only): the other pairs keep equal odds
            size = c.sizes[rng.integers(len(c.sizes))]
            shape, color = c.shapes[rng.integers(len(c.shapes))], c.colors[rng.integers(len(c.colors))]
            if self.drawable(color, shape):
                return {"shape": shape, "color": color, "size": size, "radius": SIZE_RADIUS[size]}

    @staticmethod
    def _place(rng: np.random.Generator, obj: dict[str, Any]) -> None:
        m = obj["radius"] * 1.3 + 0.01  # margin keeps the whole shape (triangle apex included) inside
        obj["center"] = [float(rng.uniform(m, 1 - m)), float(rng.uniform(m, 1 - m))]

    def sample_gt(
        self, rng: np.random.Generator, n_objects: int | None = None, place: np.random.Generator | None = None
    ) -> dict[str, Any]:
        """Attributes from `rng`, positions from `place` (default: `rng`). With a separate `place` the relation
        is drawn from `rng` as well, so every placement generator gives the same caption."""
        place = rng if place is None else place
        if n_objects is None:
            n_objects = 2 if rng.random() < self.cfg.p_two_objects else 1
        a = self._attributes(rng)
        if n_objects == 1:
            self._place(place, a)
            return {"objects": [a], "relation": None}
        b = self._attributes(rng)
        while (a["shape"], a["color"]) == (b["shape"], b["color"]):  # two objects must be distinguishable
            b = self._attributes(rng)
        wanted = None if place is rng else RELATIONS[rng.integers(len(RELATIONS))]
        for _ in range(1000):
            self._place(place, a)
            self._place(place, b)
            dx = abs(a["center"][0] - b["center"][0])
            dy = abs(a["center"][1] - b["center"][1])
            apart = max(dx, dy) >= 1.15 * (a["radius"] + b["radius"])  # separated along the relation's axis
            clear = max(dx, dy) >= 1.6 * min(dx, dy)  # the relation is unambiguous
            if apart and clear:
                if wanted is not None:
                    _orient(a, b, wanted)
                return {"objects": [a, b], "relation": relation_of(a, b)}
        raise RuntimeError("could not place two shapes; lower the sizes or raise image_size")

    def image(self, gt: dict[str, Any]) -> np.ndarray:
        return render(gt["objects"], self.cfg.image_size, self.background)

    def pair(self, index: int) -> tuple[np.ndarray, str, dict[str, Any]]:
        """(image, caption, ground truth) number `index`: the caption -> image task used for evaluation."""
        gt = self.sample_gt(self.rng(index))
        return self.image(gt), caption(gt), gt

    # ------------------------------------------------------------------ documents
    def _img(self, gt: dict[str, Any]) -> Image:
        pixels = self.image(gt) if self._render else None
        return Image(pixels=pixels, meta={"gt": gt, "caption": caption(gt)})

    def document(self, index: int, render: bool = True) -> Document:
        """Document number `index`; `render=False` skips drawing the images (text only, for tokenizers). With
        `repeat` R, documents index // R share their draw of layout, attributes and relation (their text), and
        copy index % R places the objects with its own generator."""
        self._render = render
        c = self.cfg
        drawn, copy = divmod(index, c.repeat)
        rng = self.rng(drawn)
        # copy + 1, not copy: a seed sequence ignores a trailing 0, so [seed, split, drawn, 0] would replay rng
        place = None if c.repeat == 1 else np.random.default_rng([c.seed, self._split, drawn, copy + 1])
        p = np.array([c.p_caption_image, c.p_image_caption, c.p_interleaved], dtype=np.float64)
        layout = int(rng.choice(3, p=p / p.sum()))
        key = f"shapes-{c.split}-{index:09d}"
        if layout == 0:
            gt = self.sample_gt(rng, place=place)
            return Document(key, [caption(gt), self._img(gt)], {"layout": "caption_image"})
        if layout == 1:
            gt = self.sample_gt(rng, place=place)
            return Document(key, [self._img(gt), f"this is {caption(gt)}"], {"layout": "image_caption"})
        return self._interleaved(key, rng, place)

    def _interleaved(self, key: str, rng: np.random.Generator, place: np.random.Generator | None) -> Document:
        """Two images with text between them; the second refers to the first (same shape, changed attribute)."""
        c = self.cfg
        first = self.sample_gt(rng, n_objects=1, place=place)
        a = first["objects"][0]
        kind = int(rng.integers(3))
        b = dict(a)
        other_colors = [x for x in c.colors if x != a["color"] and self.drawable(x, a["shape"])]
        other_sizes = [x for x in c.sizes if x != a["size"]]
        if kind == 0 and other_colors:
            b["color"] = other_colors[rng.integers(len(other_colors))]
            bridge = f"the same {a['shape']} in {b['color']}"
        elif kind == 1 and other_sizes:
            b["size"] = other_sizes[rng.integers(len(other_sizes))]
            b["radius"] = SIZE_RADIUS[b["size"]]
            m = b["radius"] * 1.3 + 0.01
            b["center"] = [float(np.clip(v, m, 1 - m)) for v in a["center"]]
            bridge = f"the same {a['shape']} but {b['size']}"
        else:
            second = self.sample_gt(rng, n_objects=1, place=place)
            b = second["objects"][0]
            bridge = f"and then {describe(b)}"
        gt_b = {"objects": [b], "relation": None}
        return Document(
            key,
            [caption(first), self._img(first), bridge, self._img(gt_b)],
            {"layout": "interleaved", "bridge": bridge},
        )

    def documents(self, start: int = 0, stop: int | None = None, step: int = 1) -> Iterator[Document]:
        i = start
        while stop is None or i < stop:
            yield self.document(i)
            i += step

    def captions(self, n: int) -> Iterator[str]:
        """Text for tokenizer training: every text segment of the first n documents."""
        for i in range(n):
            yield from (s for s in self.document(i, render=False).segments if isinstance(s, str))
