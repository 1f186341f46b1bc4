"""Data in other layouts, read as it is: img2dataset tars, an image folder with metadata, interleaved JSONL.

Tiny fixtures of each layout are written in a temporary folder, with bad samples among them; the tests check
the documents (text, image order, sizes), the bad-sample counts and reasons, the rank/worker split and the
exact resumption from a cursor.
"""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pytest
import webdataset as wds
from image_helpers import COLORS, image_bytes, write_img2dataset_fixture

from mmgen.data.documents import Image
from mmgen.data.external import ReadOptions, open_layout
from mmgen.data.shards import Split
from mmgen.errors import DataError

SIZE = 16  # the model's image size: every image comes out SIZE x SIZE
OPTS = ReadOptions(image_size=SIZE, min_image_size=SIZE)


def color_of(img: Image) -> str:
    assert img.rgb().shape == (SIZE, SIZE, 3)
    mean = img.rgb().reshape(-1, 3).mean(0)
    return min(COLORS, key=lambda c: np.abs(mean - COLORS[c]).sum())


def parts(doc) -> list[str]:
    return [s if isinstance(s, str) else f"<{color_of(s)}>" for s in doc.segments]


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def i2d(tmp_path):
    return tmp_path / "i2d", write_img2dataset_fixture(tmp_path / "i2d")


@pytest.fixture
def folder(tmp_path):
    """3 good images (one in a subfolder named from the root's metadata.jsonl, one from a subfolder's CSV) and
    4 bad: empty caption, a row whose file is missing, an image with no row, a too small image."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "sub2").mkdir()
    (root / "a.jpg").write_bytes(image_bytes("red"))
    (root / "sub" / "b.png").write_bytes(image_bytes("green", fmt="PNG"))
    (root / "c.webp").write_bytes(image_bytes("blue", fmt="WEBP"))
    (root / "e.jpg").write_bytes(image_bytes("white"))
    (root / "tiny.png").write_bytes(image_bytes("white", (8, 8), "PNG"))
    (root / "sub2" / "d.jpg").write_bytes(image_bytes("blue"))
    rows = [
        ("a.jpg", "a red square"),
        ("sub/b.png", "a green  square"),
        ("c.webp", "  "),
        ("gone.jpg", "lost"),
        ("tiny.png", "too small"),
    ]
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f, "text": t}) + "\n" for f, t in rows))
    (root / "sub2" / "metadata.csv").write_text('file_name,text\nd.jpg,"a blue square, from a csv"\n')
    return root


@pytest.fixture
def jsonl(tmp_path):
    """Two JSONL files: 3 good documents of three images each (both forms), 5 bad ones."""
    root = tmp_path / "docs"
    (root / "img").mkdir(parents=True)
    for c in ("red", "green", "blue"):
        (root / "img" / f"{c}.jpg").write_bytes(image_bytes(c, (64, 48)))
    (root / "img" / "white.png").write_bytes(image_bytes("white", (20, 20), "PNG"))
    a = [
        {
            "id": "obelics",
            "texts": ["Intro.", None, "Middle.", None, None, "End."],
            "images": [None, "img/red.jpg", None, "img/green.jpg", "img/blue.jpg", None],
        },
        {"texts": [], "images": []},  # empty
        {"texts": ["See", None], "images": [None, "img/missing.jpg"]},
        {"texts": ["See", None], "images": [None, "https://example.com/x.jpg"]},
    ]
    b = [
        {
            "key": "typed.1",
            "segments": [
                {"type": "image", "image": "img/blue.jpg"},
                {"type": "text", "text": "then"},
                {"type": "image", "image": "img/red.jpg"},
                {"type": "image", "image": "img/white.png"},
            ],
        },
        {"texts": ["a", None], "images": [None]},  # lists of unequal length
        {"texts": [None, None, None, "last"], "images": ["img/green.jpg", "img/green.jpg", "img/red.jpg", None]},
    ]
    (root / "a.jsonl").write_text("".join(json.dumps(d) + "\n" for d in a) + "\n")
    (root / "b.jsonl").write_text(json.dumps(b[0]) + "\n{not json\n" + "".join(json.dumps(d) + "\n" for d in b[1:]))
    return root


def read_all(layout: str, path, opts: ReadOptions = OPTS):
    stream = open_layout(layout, str(path), opts, shuffle=False, epochs=1)
    items = list(stream.items(0))
    skipped = [s for it in items for s in it.skipped] + stream.unreported
    return [it.doc for it in items], skipped


# ----------------------------------------------------------------------------------------------- documents
def test_img2dataset_documents_and_bad_samples(i2d):
    root, good = i2d
    docs, skipped = read_all("img2dataset", root)
    assert {d.key: (d.segments[0], color_of(d.segments[1])) for d in docs} == good
    assert all(d.meta["layout"] == "caption_image" for d in docs)
    reasons = sorted((key.rsplit(":", 1)[-1], why) for key, why in skipped)
    assert [k for k, _ in reasons] == ["000000001", "000020003", "000030000"]
    assert "no caption" in reasons[0][1] and "cannot decode image" in reasons[1][1]
    assert "image is 12x40, below min_image_size=16" in reasons[2][1]


def test_img2dataset_caption_field_order_and_brace_urls(i2d):
    root, good = i2d
    opts = ReadOptions(SIZE, SIZE, caption_field="alt", caption_layout="image_caption")
    docs, skipped = read_all("img2dataset", f"{root}/{{00000..00003}}.tar", opts)
    assert {d.key: (d.segments[1], color_of(d.segments[0])) for d in docs} == {
        k: (f"alt {cap}", c) for k, (cap, c) in good.items()
    }
    both, _ = read_all("img2dataset", root, ReadOptions(SIZE, SIZE, caption_layout="both"))
    first = {d.key: isinstance(d.segments[0], Image) for d in both}
    assert first == {k: hashlib.sha1(k.encode()).digest()[0] % 2 == 1 for k in good} and len(set(first.values())) == 2
    with pytest.raises(DataError, match=r"1 of the 5 shards of .* do not exist \(first: .*00004.tar\)"):
        read_all("img2dataset", f"{root}/{{00000..00004}}.tar")
    from mmgen.data.img2dataset import list_urls

    assert list_urls("https://host/cc3m/{00..02}.tar") == [f"https://host/cc3m/0{i}.tar" for i in range(3)]  # remote


def test_imagefolder_documents_and_bad_samples(folder):
    docs, skipped = read_all("imagefolder", folder)
    assert {d.key: parts(d) for d in docs} == {
        "a": ["a red square", "<red>"],
        "sub_b": ["a green square", "<green>"],
        "sub2_d": ["a blue square, from a csv", "<blue>"],
    }
    assert docs[0].images[0].meta == {"file": "a.jpg"}
    why = dict(skipped)
    assert set(why) == {"c.webp", "e.jpg", "gone.jpg", "tiny.png"}
    assert "empty caption" in why["c.webp"] and "no caption" in why["e.jpg"]
    assert "does not exist" in why["gone.jpg"] and "below min_image_size" in why["tiny.png"]
    with pytest.raises(DataError, match="no metadata.jsonl or metadata.csv"):
        read_all("imagefolder", folder / "sub")


def test_interleaved_jsonl_three_images_per_document(jsonl):
    docs, skipped = read_all("jsonl", jsonl)
    assert {d.key: parts(d) for d in docs} == {
        "obelics": ["Intro.", "<red>", "Middle.", "<green>", "<blue>", "End."],
        "typed_1": ["<blue>", "then", "<red>", "<white>"],
        "b-4": ["<green>", "<green>", "<red>", "last"],
    }
    assert all(len(d.images) == 3 and all(im.loss for im in d.images) for d in docs)
    why = dict(skipped)
    assert sorted(why) == ["a.jsonl:2", "a.jsonl:3", "a.jsonl:4", "b.jsonl:2", "b.jsonl:3"]
    assert "empty document" in why["a.jsonl:2"] and "img/missing.jpg not found" in why["a.jsonl:3"]
    assert "is a URL" in why["a.jsonl:4"] and "not a JSON object" in why["b.jsonl:2"]
    assert "equal length" in why["b.jsonl:3"]
    small, skipped = read_all("jsonl", jsonl / "b.jsonl", ReadOptions(SIZE, min_image_size=32))
    assert [d.key for d in small] == ["b-4"] and "image img/white.png: image is 20x20" in dict(skipped)["b.jsonl:1"]


def test_malformed_fields_and_rows_are_bad_samples_not_crashes(tmp_path):
    """A .json that is not an object, lists that are not lists, a metadata line that is not JSON or names no
    file inside the folder: each is one counted bad sample; an empty caption is found before the decode."""
    root = tmp_path / "i2d"
    root.mkdir()
    with wds.TarWriter(str(root / "00000.tar")) as sink:
        sink.write({"__key__": "k0", "jpg": image_bytes("red"), "txt": b"a red one"})
        sink.write({"__key__": "k1", "jpg": image_bytes("red"), "json": b"null"})
        sink.write({"__key__": "k2", "jpg": image_bytes("red"), "json": b"[1, 2]"})
        sink.write({"__key__": "k3", "jpg": b"not a jpeg", "txt": b"  "})
    docs, skipped = read_all("img2dataset", root)
    why = {key.rsplit(":", 1)[-1]: reason for key, reason in skipped}
    assert [d.key for d in docs] == ["k0"] and sorted(why) == ["k1", "k2", "k3"]
    assert why["k1"] == "sample 'k1': k1.json holds a NoneType, not an object with a caption"
    assert why["k2"] == "sample 'k2': k2.json holds a list, not an object with a caption"
    assert why["k3"] == "sample 'k3': empty caption"

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(image_bytes("red"))
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "outside.jpg").write_bytes(image_bytes("green"))
    lines = [
        {"file_name": "a.jpg", "text": "a red square"},
        "{not json",
        [1, 2],
        {"text": "no file"},
        {"file_name": 5, "text": "a number"},
        {"file_name": str(tmp_path / "outside.jpg"), "text": "absolute"},
        {"file_name": "../outside.jpg", "text": "up"},
        {"file_name": "b.jpg", "text": " "},
    ]
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    (folder / "metadata.jsonl").write_bytes(text.encode() + b"\xff\xfe\n")
    docs, skipped = read_all("imagefolder", folder)
    why = dict(skipped)
    assert [parts(d) for d in docs] == [["a red square", "<red>"]]
    assert sorted(why) == ["b.jpg"] + [f"metadata.jsonl:{n}" for n in range(2, 8)] + ["metadata.jsonl:9"]
    assert why["b.jpg"] == "b.jpg: empty caption"
    assert why["metadata.jsonl:2"].startswith("metadata.jsonl:2: not a JSON object (")
    assert why["metadata.jsonl:3"] == "metadata.jsonl:3: a list, not a JSON object"
    assert (
        why["metadata.jsonl:4"]
        == "metadata.jsonl:4: 'file_name' is None, not the image's path relative to the metadata file"
    )
    assert why["metadata.jsonl:5"].startswith("metadata.jsonl:5: 'file_name' is 5, not")
    for n, name in ((6, str(tmp_path / "outside.jpg")), (7, "../outside.jpg")):
        assert why[f"metadata.jsonl:{n}"] == (
            f"metadata.jsonl:{n}: file_name {name!r} leaves the folder; give a path inside it (no leading '/', no '..')"
        )
    assert why["metadata.jsonl:9"].startswith("metadata.jsonl:9: not a JSON object (")
    with pytest.raises(
        DataError,
        match=r"no metadata row has a 'caption' column \(columns: file_name, text\); set "
        r"caption_field \(--caption-field\) to the caption column",
    ):
        read_all("imagefolder", folder, ReadOptions(SIZE, SIZE, caption_field="caption"))

    (tmp_path / "docs.jsonl").write_text('{"texts": 5, "images": 5}\n{"texts": ["hi"], "images": [null]}\n')
    docs, skipped = read_all("jsonl", tmp_path / "docs.jsonl")
    assert [d.segments for d in docs] == [["hi"]]
    assert skipped == [
        (
            "docs.jsonl:1",
            "docs.jsonl:1: 'texts' and 'images' must be lists (with null where the "
            "other holds the segment), got int and int",
        )
    ]


# ----------------------------------------------------------------------------------------------- split and resume
@pytest.mark.parametrize("layout", ["img2dataset", "imagefolder", "jsonl"])
def test_ranks_workers_cover_each_document_once_and_resume_exactly(layout, i2d, folder, jsonl):
    path, n_docs, n_bad = {"img2dataset": (i2d[0], 13, 3), "imagefolder": (folder, 3, 4), "jsonl": (jsonl, 3, 5)}[
        layout
    ]

    def stream(rank: int, epochs: int):
        return open_layout(layout, str(path), OPTS, Split(rank, 2, 2), seed=7, shuffle_buffer=4, epochs=epochs)

    keys, bad = [], 0
    for rank in range(2):
        for worker in range(2):
            s = stream(rank, 1)
            items = list(s.items(worker))
            keys += [it.doc.key for it in items]
            bad += sum(len(it.skipped) for it in items) + len(s.unreported)
    assert len(keys) == n_docs and len(set(keys)) == n_docs and bad == n_bad
    for rank, worker in itertools.product(range(2), range(2)):
        full = [(it.epoch, it.index, it.doc.key) for it in stream(rank, 3).items(worker)]
        for stop in range(len(full)):
            e, i, _ = full[stop]
            rest = [(it.epoch, it.index, it.doc.key) for it in stream(rank, 3).items(worker, (e, i + 1))]
            assert full[: stop + 1] + rest == full


def test_dataloader_workers_read_a_record_layout(folder):
    from mmgen.data.loader import PackedDataset, make_loader

    s = open_layout("imagefolder", str(folder), OPTS, Split(0, 1, 2), seed=1, epochs=1)
    keys = [it.doc.key for it in make_loader(PackedDataset(s, None), 2)]
    assert sorted(keys) == ["a", "sub2_d", "sub_b"]


@pytest.mark.parametrize("layout", ["img2dataset", "imagefolder", "jsonl"])
def test_loader_resume_with_workers_continues_the_same_batches(layout, i2d, folder, jsonl, text_tokenizer):
    """Through the DataCursor and two DataLoader workers, as training resumes from a checkpoint."""
    from mmgen.data.loader import DataCursor, PackedDataset, make_loader
    from mmgen.data.packing import Packer, PackSpec
    from mmgen.models.model import MMGenConfig

    path = {"img2dataset": i2d[0], "imagefolder": folder, "jsonl": jsonl}[layout]
    spec = PackSpec.from_config(MMGenConfig(image_grid=(2, 2), image_size=SIZE), rows=2, seq_len=96)

    def loader(cursor: DataCursor):
        stream = open_layout(layout, str(path), OPTS, Split(0, 1, 2), seed=3, shuffle_buffer=4)
        return make_loader(PackedDataset(stream, Packer(text_tokenizer, spec), cursor), num_workers=2)

    full = [b.keys for b in itertools.islice(loader(DataCursor(2)), 12)]
    cursor = DataCursor(2)
    for b in itertools.islice(loader(cursor), 5):
        cursor.update(b)
    state = json.loads(json.dumps(cursor.state_dict()))  # as a checkpoint stores it
    resumed = [b.keys for b in itertools.islice(loader(DataCursor.from_state(state, 2)), 7)]
    assert resumed == full[5:] and full[:7] != full[5:]  # a loader that ignored the cursor would fail


def test_training_config_reads_each_layout(i2d, folder, jsonl):
    from mmgen.config import ConfigError, RunConfig, load_config
    from mmgen.train.build import document_source

    for layout, path in (("img2dataset", i2d[0]), ("imagefolder", folder), ("jsonl", jsonl)):
        cfg = load_config(RunConfig, None, [f"data.source={layout}", f"data.path={path}", "data.image_size=16"])
        item = next(document_source(cfg, Split()).items(0))
        assert all(im.rgb().shape == (16, 16, 3) for im in item.doc.images) and item.doc.images
    with pytest.raises(ConfigError, match=r"source 'jsonl' needs data.path"):
        load_config(RunConfig, None, ["data.source=jsonl"])


def test_an_endless_stream_of_only_bad_records_is_an_error(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"texts": [], "images": []}\n{"segments": [{"type": "video"}]}\n')
    stream = open_layout("jsonl", str(tmp_path / "bad.jsonl"), OPTS, Split(num_workers=2))
    with pytest.raises(
        DataError,
        match=r"no readable document in \d+ consecutive passes over 2 record\(s\) "
        r"\(bad.jsonl:1, bad.jsonl:2\): \d+ unreadable sample\(s\), the first: "
        r"bad.jsonl:\d: .*\. Fix the data",
    ):
        next(stream.items(0))


def test_a_record_stream_dealt_only_bad_records_goes_on_while_others_may_be_dealt(tmp_path):
    """As for shards: shuffled, a worker dealt only the bad record in an epoch reads the good one in a later
    epoch; unshuffled, it is dealt the bad one every epoch, so one empty pass is enough to know."""
    (tmp_path / "d.jsonl").write_text('{"id": "good", "texts": ["hello"], "images": [null]}\n{"texts": 5}\n')
    stream = open_layout("jsonl", str(tmp_path / "d.jsonl"), OPTS, Split(num_workers=2), seed=0)
    start = next(e for e in range(50) if stream.units_for(e, 0) == [1])
    items = list(itertools.islice(stream.items(0, (start, 0)), 3))
    assert [it.doc.key for it in items] == ["good"] * 3 and all(it.epoch > start for it in items)
    assert items[0].skipped[0][0] == "d.jsonl:2"
    fixed = open_layout("jsonl", str(tmp_path / "d.jsonl"), OPTS, Split(num_workers=2), shuffle=False)
    assert next(fixed.items(0)).doc.key == "good"
    with pytest.raises(DataError, match=r"in a whole pass over 1 record\(s\) \(d.jsonl:2\): 1 unreadable"):
        next(fixed.items(1))
