"""Bad shards through the real training entry point (scripts/train.py `main`, in-process): a shard set without
one readable document is one named error line and exit code 2, never a traceback or a hang; a bad sample is a
counted, reported skip; a pass of one stream that reads nothing does not stop the others' shards."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_S, REPO, assert_refused, deadline
from helpers import metrics, tiny_run
from PIL import Image as PILImage

from mmgen.config import ShapesConfig, dump_config
from mmgen.data.documents import to_sample
from mmgen.data.shapes import ShapesGenerator
from mmgen.data.shards import ShardStream, Split, read_documents
from mmgen.errors import DataError


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def good_sample(i: int) -> dict[str, bytes]:
    doc = ShapesGenerator(ShapesConfig(image_size=16)).document(i)
    return {f"{doc.key}.{ext}": v for ext, v in to_sample(doc).items() if ext != "__key__"}


def json_samples(n: int, text: bytes) -> dict[str, bytes]:
    return {f"bad{i:03d}.json": text for i in range(n)}


PNG = next(v for k, v in good_sample(0).items() if k.endswith(".png"))

# (id, shard members or raw bytes, the named error); every shard set here has no readable document
BAD_SHARDS = [
    ("random-bytes", random.Random(0).randbytes(20_000), r"ReadError: "),
    ("zero-byte-tar", b"", r"ReadError: empty file"),
    ("tar-without-samples", {}, r"they hold no samples"),
    ("readme-only", {"README.txt": b"hello"}, r"sample 'README' has no \.json part"),
    ("segments-of-numbers", json_samples(8, b'{"segments": [5]}'), r"segment 0 is 5, not an object"),
    ("json-is-a-number", json_samples(8, b"5"), r"\.json holds 5, not a non-empty list of segments"),
    ("text-null", json_samples(8, b'{"segments": [{"text": null}]}'), r"segment 0 has text None, not a string"),
    ("not-json", json_samples(8, b"{not json"), r"unreadable \.json \(JSONDecodeError"),
    ("image-index-string", json_samples(8, b'{"segments": [{"image": "0"}]}'), r"image '0', not an image index"),
    ("image-missing", json_samples(8, b'{"segments": [{"text": "a"}, {"image": 0}]}'), r"image 0 is missing"),
    ("broken-png", {"a.json": b'{"segments": [{"image": 0}]}', "a.0.png": PNG[:40]}, r"cannot decode image"),
    ("no-json-part", {"a.0.png": PNG}, r"has no \.json part"),
]


@pytest.mark.parametrize("name,content,message", BAD_SHARDS, ids=[c[0] for c in BAD_SHARDS])
def test_shards_without_a_readable_document_are_a_named_error(train, tmp_path, name, content, message):
    shards = tmp_path / "shards"
    shards.mkdir()
    if isinstance(content, bytes):
        (shards / "s-000000.tar").write_bytes(content)
    else:
        write_tar(shards / "s-000000.tar", content)
    result = train(tmp_path / "run", "data.source=shards", f"data.shards={shards}")
    assert_refused(result, r"no readable document in a whole pass over 1 shard\(s\) \(\S+/s-000000.tar\): .*" + message)


def test_unreadable_shards_in_a_dataloader_worker_keep_their_message(train, tmp_path):
    """Raised in a worker process, the error reaches the main process as itself (not re-wrapped with the
    worker's traceback pasted into the message)."""
    (tmp_path / "shards").mkdir()
    write_tar(tmp_path / "shards" / "s-000000.tar", json_samples(4, b'{"segments": [5]}'))
    result = train(tmp_path / "run", "data.source=shards", f"data.shards={tmp_path / 'shards'}", "data.num_workers=1")
    assert_refused(result, r"^error: no readable document in a whole pass over 1 shard.*segment 0 is 5, not an object")


def test_skip_report_is_bounded():
    from mmgen.data.skips import SkipReport

    report = SkipReport(first=5, every=1000)
    lines = [line for i in range(3000) if (line := report.add(f"k{i}", "bad")) is not None]
    assert len(lines) == 7 and report.count == 3000
    assert lines[4].endswith(
        "(from now on one line per 1000 skipped samples; metrics.jsonl counts them as data_skipped)"
    )
    assert lines[5:] == [
        "1005 unreadable samples skipped so far (the latest: k1004: bad)",
        "2005 unreadable samples skipped so far (the latest: k2004: bad)",
    ]


def test_no_shards_at_all(train, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_refused(
        train(tmp_path / "run", "data.source=shards", f"data.shards={tmp_path / 'empty'}"),
        r"data.shards: no shards found",
    )


def test_random_bytes_shard_in_a_real_process_exits_with_one_line(tiny_assets, tmp_path):
    """The same as above in its own process (the way a user runs it), under a hard timeout."""
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "x.tar").write_bytes(random.Random(1).randbytes(5000))
    cfg = dump_config(
        tiny_run(tiny_assets, tmp_path / "run", "data.source=shards", f"data.shards={tmp_path / 'shards'}"),
        tmp_path / "c.yaml",
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), "--config", str(cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith("error: no readable document in a whole pass over 1 shard")


def test_bad_samples_are_skipped_counted_and_reported_at_a_bounded_rate(train, tmp_path):
    """Shards mixing good documents with every kind of bad sample train to the end; metrics.jsonl counts the
    skips; the trainer prints the first five one by one (the stream's logger too), not one line per skip."""
    shards = tmp_path / "shards"
    good = {k: v for i in range(12) for k, v in good_sample(i).items()}
    bad = {
        **json_samples(3, b'{"segments": [5]}'),
        "num.json": b"5",
        "nul.json": b'{"segments": [{"text": null}]}',
        "nojson.0.png": PNG,
        "broken.json": b"{not json",
        "trunc.json": b'{"segments": [{"image": 0}]}',
        "trunc.0.png": PNG[:40],
    }
    shards.mkdir()
    write_tar(shards / "s-000000.tar", {**good, **bad})
    code, out, err = train(tmp_path / "run", "data.source=shards", f"data.shards={shards}", "train.steps=4")
    assert code == 0 and "Traceback" not in out + err, err[-3000:]
    skipped = metrics(tmp_path / "run")[-1]["data_skipped"]
    assert skipped >= len(bad) and skipped % len(bad) == 0  # every pass over the shard skips the same 9
    assert out.count("skipping unreadable sample") == 5 and "one line per 1000" in out
    assert err.count("skipping unreadable sample") <= 5


# ------------------------------------------------------------------------------------ one stream's empty pass
def shard_pair(tmp_path: Path, good: bool = True) -> tuple[str, str]:
    """(a shard of 6 good documents, or of random bytes when not `good`; a shard of random bytes)."""
    first, bad = tmp_path / "a.tar", tmp_path / "b.tar"
    if good:
        write_tar(first, {k: v for i in range(6) for k, v in good_sample(i).items()})
    else:
        first.write_bytes(random.Random(2).randbytes(5000))
    bad.write_bytes(random.Random(3).randbytes(5000))
    return str(first), str(bad)


def test_a_pass_that_reads_nothing_goes_on_while_other_shards_may_be_dealt(tmp_path):
    """Two workers, shuffled: in an epoch where worker 0 is dealt only the unreadable shard it reads nothing;
    the readable shard comes to it in a later epoch, so the stream goes on (the skip is reported there)."""
    good, bad = shard_pair(tmp_path)
    stream = ShardStream([good, bad], Split(num_workers=2), seed=0)
    start = next(e for e in range(50) if stream.shards_for(e, 0) == [bad])
    with deadline(30):
        items = [item for item, _ in zip(stream.items(0, (start, 0)), range(8), strict=False)]
    assert len(items) == 8 and all(item.epoch > start for item in items)
    keys = {ShapesGenerator(ShapesConfig(image_size=16)).document(i).key for i in range(6)}
    assert {item.doc.key for item in items} == keys  # 8 items: every document of the readable shard
    assert any(bad in key for key, _ in items[0].skipped), items[0].skipped


def test_every_shard_unreadable_stops_once_the_empty_passes_covered_them_all(tmp_path):
    first, bad = shard_pair(tmp_path, good=False)
    stream = ShardStream([first, bad], Split(num_workers=2), seed=0)
    with (
        deadline(30),
        pytest.raises(
            DataError,
            match=r"no readable document in \d+ consecutive passes over 2 "
            r"shard\(s\) \(\S+/a.tar, \S+/b.tar\): \d+ unreadable",
        ),
    ):
        next(stream.items(0))


def test_unshuffled_a_stream_dealt_only_unreadable_shards_stops_after_one_pass(tmp_path):
    """Without shuffling a worker is dealt the same shards every epoch: one empty pass is enough to know."""
    good, bad = shard_pair(tmp_path)
    stream = ShardStream([good, bad], Split(num_workers=2), shuffle=False)
    assert next(stream.items(0)).doc.images  # worker 0 reads a.tar
    with deadline(30), pytest.raises(DataError, match=r"in a whole pass over 1 shard\(s\) \(\S+/b.tar\)"):
        next(stream.items(1))


# ------------------------------------------------------------------------------------------- 16-bit images
def test_sixteen_bit_png_in_a_shard_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    buf = io.BytesIO()
    PILImage.fromarray(ramp).save(buf, format="PNG")  # a 16-bit greyscale PNG
    assert PILImage.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    (tmp_path / "s").mkdir()
    write_tar(
        tmp_path / "s" / "s-000000.tar",
        {"g.json": b'{"segments": [{"text": "grey"}, {"image": 0}]}', "g.0.png": buf.getvalue()},
    )
    (doc,) = read_documents(tmp_path / "s")
    rgb = doc.images[0].rgb()
    want = np.rint(ramp / 257.0).astype(np.uint8)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8 and (rgb == want[..., None]).all()
    assert rgb.min() == 0 and rgb.max() == 255 and (rgb == 255).mean() < 0.01  # clipping made 99.6 % white
