"""The shapes data set: captions agree with the ground truth and the ground truth with the pixels."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mmgen.config import ShapesConfig
from mmgen.data.documents import Image
from mmgen.data.shapes import PALETTE, SIZE_RADIUS, ShapesGenerator, caption, parse_caption, relation_of


@pytest.fixture(scope="module")
def gen():
    return ShapesGenerator(ShapesConfig())


def _mask(img: np.ndarray, color: str) -> np.ndarray:
    return np.all(np.abs(img.astype(int) - PALETTE[color]) <= 3, axis=-1)


def _coverage(img: np.ndarray, color: str) -> float:
    """Area of one colour on the black background, anti-aliased edges counted by their blend fraction."""
    c = np.asarray(PALETTE[color], dtype=float)
    px = img.astype(float)
    alpha = np.clip(px @ c / (c @ c), 0, 1)
    on_segment = np.linalg.norm(px - alpha[..., None] * c, axis=-1) < 12  # a blend of black and this colour
    return float((alpha * on_segment).sum())


AREA = {"circle": np.pi, "square": np.pi, "diamond": np.pi, "triangle": 2.6}  # x radius^2


def test_caption_round_trips_ground_truth(gen):
    for i in range(300):
        _, cap, gt = gen.pair(i)
        parsed = parse_caption(cap)
        assert parsed is not None, cap
        assert parsed["relation"] == gt["relation"]
        for p, o in zip(parsed["objects"], gt["objects"], strict=True):
            assert (p["shape"], p["color"], p["size"]) == (o["shape"], o["color"], o["size"])


def test_pixels_agree_with_ground_truth(gen):
    S = gen.cfg.image_size
    for i in range(300):
        img, cap, gt = gen.pair(i)
        assert img.shape == (S, S, 3) and img.dtype == np.uint8
        colors = [o["color"] for o in gt["objects"]]
        for o in gt["objects"]:
            cx, cy = o["center"]
            px = img[int(cy * S), int(cx * S)]
            assert tuple(px) == PALETTE[o["color"]], (i, cap)
            if colors.count(o["color"]) == 1:
                area = _coverage(img, o["color"]) / S**2  # fraction of the image
                expected = AREA[o["shape"]] * SIZE_RADIUS[o["size"]] ** 2
                assert 0.8 * expected < area < 1.2 * expected, (i, cap, area, expected)
        if gt["relation"] is not None and colors[0] != colors[1]:
            # the relation in the caption is the relation of the colour blobs' centroids
            cents = []
            for c in colors:
                ys, xs = np.nonzero(_mask(img, c))
                cents.append({"center": [xs.mean() / S, ys.mean() / S]})
            assert relation_of(cents[0], cents[1]) == gt["relation"], (i, cap)
            assert gt["relation"] in cap


def test_deterministic_and_split(gen):
    a, b = gen.document(17), gen.document(17)
    assert a.text_with_placeholders() == b.text_with_placeholders()
    assert all(np.array_equal(x.pixels, y.pixels) for x, y in zip(a.images, b.images))
    test = ShapesGenerator(ShapesConfig(split="test"))
    assert [test.pair(i)[1] for i in range(20)] != [gen.pair(i)[1] for i in range(20)]


def test_documents_mix_layouts_and_refer_back(gen):
    layouts = {}
    for i in range(400):
        doc = gen.document(i)
        layouts[doc.meta["layout"]] = layouts.get(doc.meta["layout"], 0) + 1
        if doc.meta["layout"] == "interleaved":
            t0, im0, bridge, im1 = doc.segments
            assert isinstance(im0, Image) and isinstance(im1, Image)
            a, b = im0.meta["gt"]["objects"][0], im1.meta["gt"]["objects"][0]
            assert t0 == caption(im0.meta["gt"])
            if bridge.startswith("the same") and " in " in bridge:
                assert (b["shape"], b["center"], b["size"]) == (a["shape"], a["center"], a["size"])
                assert b["color"] != a["color"] and bridge.endswith(b["color"])
            elif bridge.startswith("the same"):
                assert (b["shape"], b["color"]) == (a["shape"], a["color"]) and b["size"] != a["size"]
            else:
                assert bridge == "and then " + caption(im1.meta["gt"])
        elif doc.meta["layout"] == "image_caption":
            assert isinstance(doc.segments[0], Image) and doc.segments[1].endswith(doc.segments[0].meta["caption"])
        else:
            assert doc.segments[0] == doc.segments[1].meta["caption"]
    assert set(layouts) == {"caption_image", "image_caption", "interleaved"}


def test_configurable_size_and_bad_names():
    g = ShapesGenerator(ShapesConfig(image_size=64))
    assert g.pair(0)[0].shape == (64, 64, 3)
    with pytest.raises(ValueError, match="hexagon"):
        ShapesGenerator(ShapesConfig(shapes=["hexagon"]))
    assert parse_caption("a huge red circle") is None


HOLDOUT = ["red triangle", "blue circle"]


def _pairs(doc) -> set[tuple[str, str]]:
    objs = [o for s in doc.segments if isinstance(s, Image) for o in s.meta["gt"]["objects"]]
    return {(o["color"], o["shape"]) for o in objs}


def test_holdout_pairs_never_reach_the_train_split_but_reach_the_test_split():
    train = ShapesGenerator(ShapesConfig(holdout=HOLDOUT))
    test = ShapesGenerator(ShapesConfig(holdout=HOLDOUT, split="test"))
    held = {("red", "triangle"), ("blue", "circle")}
    drawn = set().union(*(_pairs(train.document(i)) for i in range(600)))  # every layout, bridges included
    assert not drawn & held
    assert len(drawn) == 6 * 4 - 2  # every other pair still occurs
    captions = " ".join(train.captions(600))
    assert "red triangle" not in captions and "blue circle" not in captions
    assert "triangle in red" not in captions and "circle in blue" not in captions
    assert set().union(*(_pairs(test.document(i)) for i in range(600))) >= held


def _digest(cfg: ShapesConfig, n: int = 300) -> str:
    g = ShapesGenerator(cfg)
    docs = (
        " / ".join(s if isinstance(s, str) else s.meta["caption"] for s in g.document(i).segments) for i in range(n)
    )
    return hashlib.sha256("|".join(docs).encode()).hexdigest()[:16]


def test_no_holdout_draws_what_it_always_drew():
    # golden digests of the first 300 documents, recorded before the holdout option existed
    assert _digest(ShapesConfig()) == "b676196fb02059e4"
    assert _digest(ShapesConfig(split="test")) == "5d81c3f44578de51"
    assert _digest(ShapesConfig(split="test", holdout=HOLDOUT)) == "5d81c3f44578de51"  # the test split draws all


@pytest.mark.parametrize(
    "holdout, match",
    [
        (["red hexagon"], "is not '<colour> <shape>'"),
        (["redcircle"], "is not '<colour> <shape>'"),
        ([f"{c} circle" for c in ("red", "green", "blue", "yellow", "purple", "white")], "every colour of 'circle'"),
    ],
)
def test_bad_holdout_names_the_pair(holdout, match):
    with pytest.raises(ValueError, match=match):
        ShapesConfig(holdout=holdout)


# ------------------------------------------------------------------ repeat: several placements of one caption
def _texts(doc) -> list[str]:
    return [s if isinstance(s, str) else s.meta["caption"] for s in doc.segments]


def test_repeat_shares_the_text_and_draws_new_placements():
    R = 4
    g = ShapesGenerator(ShapesConfig(repeat=R))
    for drawn in range(40):  # every layout, one and two objects, all four relations
        docs = [g.document(drawn * R + c) for c in range(R)]
        assert all(_texts(d) == _texts(docs[0]) for d in docs), _texts(docs[0])
        centers = {
            tuple(s.meta["gt"]["objects"][0]["center"]) for d in docs for s in d.segments[:2] if not isinstance(s, str)
        }
        assert len(centers) == R  # each copy is placed by its own generator
        for d in docs:
            for s in d.segments:
                if isinstance(s, str):
                    continue
                gt = s.meta["gt"]
                assert caption(gt) == s.meta["caption"]  # the relation holds for the moved placement
                if gt["relation"] is not None:
                    assert relation_of(*gt["objects"]) == gt["relation"]
                for o in gt["objects"]:  # inside the margin that keeps the whole shape on the canvas
                    m = o["radius"] * 1.3 + 0.01
                    assert all(m - 1e-9 <= v <= 1 - m + 1e-9 for v in o["center"]), o
                if gt["relation"] is not None:  # the placement rules of sample_gt still hold after _orient
                    a, b = gt["objects"]
                    dx, dy = (abs(a["center"][k] - b["center"][k]) for k in (0, 1))
                    assert max(dx, dy) >= 1.15 * (a["radius"] + b["radius"]) and max(dx, dy) >= 1.6 * min(dx, dy)
    texts = " | ".join(" ".join(_texts(g.document(i * R))) for i in range(200))
    assert all(f" {r} " in texts for r in ("above", "below", "left of", "right of"))


CENTERS_DIGEST = "fd571f1119bb3476"  # the object centres of documents 0-99, recorded at b9574f0


def test_repeat_one_is_the_stream_it_always_was():
    assert _digest(ShapesConfig(repeat=1)) == "b676196fb02059e4"
    g = ShapesGenerator(ShapesConfig(repeat=1))  # placements too (recorded before the repeat option existed)
    centers = [
        [round(v, 6) for o in s.meta["gt"]["objects"] for v in o["center"]]
        for i in range(100)
        for s in g.document(i).segments
        if not isinstance(s, str)
    ]
    assert hashlib.sha256(repr(centers).encode()).hexdigest()[:16] == CENTERS_DIGEST
    with pytest.raises(ValueError, match="repeat .* must be >= 1, got 0"):
        ShapesConfig(repeat=0)


def test_stream_deals_the_copies_of_a_caption_to_one_worker_in_a_row():
    from mmgen.data.loader import ShapesStream
    from mmgen.data.shards import Split

    R = 3
    stream = ShapesStream(ShapesConfig(repeat=R), Split(rank=1, world_size=2, num_workers=2))
    for worker in (0, 1):
        idx = [stream.global_index(worker, i) for i in range(4 * R)]
        for k in range(4):  # positions k*R .. k*R+R-1 are the R copies of one drawn caption
            block = idx[k * R : (k + 1) * R]
            assert block == list(range(block[0], block[0] + R)) and block[0] % R == 0
    for R in (1, 3):  # every (rank, worker) stream together covers each document index exactly once
        seen = [
            ShapesStream(ShapesConfig(repeat=R), Split(rank=r, world_size=2, num_workers=3)).global_index(w, i)
            for r in range(2)
            for w in range(3)
            for i in range(10 * R)
        ]
        assert sorted(seen) == list(range(60 * R))
