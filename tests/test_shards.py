"""Shards: round trip, exact splitting over ranks and workers, exact resume, corrupt samples reported."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest

from mmgen.config import ShapesConfig
from mmgen.data.documents import Document, Image
from mmgen.data.loader import DataCursor, PackedDataset, make_loader
from mmgen.data.shapes import ShapesGenerator
from mmgen.data.shards import ShardStream, Split, read_documents, write_shards


def _same(a: Document, b: Document) -> bool:
    if a.key != b.key or a.meta != b.meta or len(a.segments) != len(b.segments):
        return False
    for x, y in zip(a.segments, b.segments):
        if isinstance(x, str):
            if x != y:
                return False
        elif not (isinstance(y, Image) and np.array_equal(x.rgb(), y.rgb()) and x.meta == y.meta and x.loss == y.loss):
            return False
    return True


def test_round_trip(tmp_path):
    docs = list(ShapesGenerator(ShapesConfig()).documents(0, 30))
    docs.append(Document("text-only", ["just text, no image"], {"source": "test"}))
    docs.append(
        Document("latents", ["cached", Image(latents=np.arange(24, dtype=np.float16).reshape(2, 3, 4), loss=False)])
    )
    index = write_shards(docs, tmp_path, prefix="rt", max_count=7)
    assert index["samples"] == 32 and len(index["shards"]) == 5
    back = list(read_documents(tmp_path))
    assert [d.key for d in back] == [d.key for d in docs]
    assert all(_same(a, b) for a, b in zip(docs[:-1], back[:-1]))
    lat = back[-1].segments[1]
    assert lat.latents.dtype == np.float16 and np.array_equal(lat.latents, docs[-1].segments[1].latents)
    assert lat.loss is False


def test_ranks_and_workers_cover_every_sample_once(shapes_shards):
    keys = []
    for rank in range(2):
        for worker in range(2):
            stream = ShardStream(shapes_shards, Split(rank, 2, 2), seed=3, epochs=1)
            keys += [it.doc.key for it in stream.items(worker)]
    counts = Counter(keys)
    assert len(counts) == 200 and set(counts.values()) == {1}


def test_dataloader_workers_cover_every_sample_once(shapes_shards):
    """The real path: two ranks, each a DataLoader with two worker processes."""
    keys = []
    for rank in range(2):
        stream = ShardStream(shapes_shards, Split(rank, 2, 2), seed=5, epochs=1)
        loader = make_loader(PackedDataset(stream, None), num_workers=2)
        keys += [it.doc.key for it in loader]
    assert sorted(keys) == sorted(f"shapes-train-{i:09d}" for i in range(200))


def test_epochs_reshuffle(shapes_shards):
    stream = ShardStream(shapes_shards, Split(), seed=0, epochs=2)
    items = list(stream.items(0))
    e0 = [i.doc.key for i in items if i.epoch == 0]
    e1 = [i.doc.key for i in items if i.epoch == 1]
    assert sorted(e0) == sorted(e1) and e0 != e1 and len(e0) == 200


@pytest.mark.parametrize("stop", [0, 37, 199, 250])
def test_resume_yields_exactly_the_unseen_samples(shapes_shards, stop):
    stream = ShardStream(shapes_shards, Split(1, 2, 2), seed=11, epochs=3)
    full = [(i.epoch, i.doc.key) for i in stream.items(1)]
    seen = list(zip(range(stop), stream.items(1)))
    start = (seen[-1][1].epoch, seen[-1][1].index + 1) if seen else (0, 0)
    rest = [(i.epoch, i.doc.key) for i in stream.items(1, start)]
    assert rest == full[stop:]


def test_loader_resume_with_workers_continues_the_same_batches(shapes_shards, text_tokenizer):
    from mmgen.data.packing import Packer, PackSpec
    from mmgen.models.model import MMGenConfig

    spec = PackSpec.from_config(MMGenConfig(image_grid=(2, 2), image_size=32), rows=2, seq_len=96)

    def loader(cursor=None):
        stream = ShardStream(shapes_shards, Split(0, 1, 2), seed=7, shuffle_buffer=16)
        cursor = cursor or DataCursor(2)
        return make_loader(PackedDataset(stream, Packer(text_tokenizer, spec), cursor), num_workers=2), cursor

    full_loader, _ = loader()
    full = [b.keys for _, b in zip(range(30), full_loader)]
    part_loader, cursor = loader()
    for _, b in zip(range(13), part_loader):
        cursor.update(b)
    del part_loader
    state = json.loads(json.dumps(cursor.state_dict()))  # as a checkpoint stores it
    resumed_loader, _ = loader(DataCursor.from_state(state, 2))
    resumed = [b.keys for _, b in zip(range(17), resumed_loader)]
    assert resumed == full[13:]
    with pytest.raises(ValueError, match="data.num_workers=2"):
        DataCursor.from_state(state, 4)


def _corrupt_shard(path, good_docs):
    """A shard with good samples, a broken PNG, a sample without JSON, and bad JSON."""
    from mmgen.data.documents import to_sample

    with tarfile.open(path, "w") as tar:

        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i, doc in enumerate(good_docs):
            s = to_sample(doc)
            if i == 2:
                s["0.png"] = b"\x89PNG\r\n\x1a\n this is not an image"
                doc.key = "broken-png"
                s["__key__"] = "broken-png"
            for ext, data in s.items():
                if ext != "__key__":
                    add(f"{s['__key__']}.{ext}", data)
        add("no-json.0.png", b"whatever")
        add("bad-json.json", b"{not json")


def test_corrupt_samples_are_skipped_and_reported(tmp_path, caplog):
    docs = list(ShapesGenerator(ShapesConfig(p_interleaved=0, p_image_caption=0)).documents(0, 6))
    _corrupt_shard(tmp_path / "bad-000000.tar", docs)
    stream = ShardStream(tmp_path, Split(), shuffle=False, epochs=1)
    with caplog.at_level("WARNING"):
        items = list(stream.items(0))
    reported = [k for it in items for k, _ in it.skipped] + [k for k, _ in stream.unreported]
    assert [it.doc.key for it in items] == [d.key for i, d in enumerate(docs) if i != 2]
    assert any("broken-png" in k for k in reported)
    assert any("no-json" in k for k in reported) and any("bad-json" in k for k in reported)
    assert len(reported) == 3
    assert "broken-png" in caplog.text


def test_truncated_shard_is_reported_not_fatal(tmp_path):
    docs = list(ShapesGenerator(ShapesConfig()).documents(0, 20))
    write_shards(docs, tmp_path, prefix="t", max_count=10)
    shard = tmp_path / "t-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    stream = ShardStream(tmp_path, Split(), shuffle=False, epochs=1)
    items = list(stream.items(0))
    reported = [k for it in items for k, _ in it.skipped] + [k for k, _ in stream.unreported]
    assert 10 <= len(items) < 20 and reported


def test_too_few_shards_for_the_split(shapes_shards):
    with pytest.raises(ValueError, match="cannot feed 4 ranks x 4 workers"):
        ShardStream(shapes_shards, Split(0, 4, 4))


def test_prepare_data_writes_a_seeded_shuffled_order(tmp_path):
    """Sources list their files sorted (CIFAR-10: class by class); prepare_data writes a seeded permutation,
    or the source order with --shuffle-seed -1."""
    from helpers import run_script

    def keys(out, *flags):
        argv = ["--source", "shapes", "--limit", "40", "--shard-size", "10", "--out", str(out), *flags]
        assert run_script("prepare_data", *argv) == 0
        return [d.key for d in read_documents(sorted(str(p) for p in out.glob("*.tar")))]

    source = keys(tmp_path / "source", "--shuffle-seed", "-1")
    shuffled = keys(tmp_path / "a")
    assert sorted(shuffled) == sorted(source) and shuffled != source
    assert keys(tmp_path / "b") == shuffled and keys(tmp_path / "c", "--shuffle-seed", "1") != shuffled
