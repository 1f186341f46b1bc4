"""Cached latents: training from them equals encoding on the fly, the cache resumes exactly, and latents of
another tokenizer (or none) are refused with a message that says what to do."""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_script
from image_helpers import image_bytes, write_img2dataset_fixture

from mmgen.config import RunConfig, load_config
from mmgen.data.documents import Document, Image
from mmgen.data.external import ReadOptions, read_items
from mmgen.data.img2dataset import write_img2dataset
from mmgen.data.latent_cache import LatentCache, tokenizer_identity
from mmgen.data.shards import Item, read_documents
from mmgen.errors import DataError
from mmgen.tokenizer.image import ImageTokenizer, load_image_tokenizer


@pytest.fixture(scope="module")
def i2d(tmp_path_factory):
    """13 good and 3 bad samples in 4 img2dataset tars."""
    root = tmp_path_factory.mktemp("i2d")
    write_img2dataset_fixture(root)
    return root


@pytest.fixture(scope="module")
def other_tok(tiny_assets, tmp_path_factory) -> Path:
    """An image tokenizer of the same recipe with other weights: its latents are not interchangeable."""
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("other") / "image"
    ImageTokenizer(load_image_tokenizer(tiny_assets / "image").recipe).save_pretrained(out)
    return out


def cache(i2d: Path, assets: Path, out: Path, *flags: str, tok: Path | None = None) -> dict:
    """`scripts/cache_latents.py` on the img2dataset fixture at 16 px; the index.json it wrote."""
    argv = ["--source", f"img2dataset:{i2d}", "--tokenizer", str(tok or assets / "image"), "--image-size", "16"]
    assert run_script("cache_latents", *argv, "--out", str(out), *flags) == 0
    return json.loads((out / "index.json").read_text())


def prepare(i2d: Path, out: Path, *flags: str) -> dict:
    """`scripts/prepare_data.py` on the img2dataset fixture; the index.json it wrote."""
    assert run_script("prepare_data", "--source", f"img2dataset:{i2d}", "--out", str(out), *flags) == 0
    return json.loads((out / "index.json").read_text())


def prepare_latents(i2d: Path, assets: Path, out: Path, *flags: str) -> dict:
    """`prepare_data.py --latents` with the tiny tokenizer at 16 px."""
    return prepare(i2d, out, "--latents", str(assets / "image"), "--image-size", "16", *flags)


def interrupted(items, after: int):
    """The items, then a KeyboardInterrupt in place of item number `after` (an interrupted run)."""
    for n, item in enumerate(items):
        if n == after:
            raise KeyboardInterrupt
        yield item


def latents_by_key(folder: Path) -> dict[str, np.ndarray]:
    return {d.key: d.images[0].latents for d in read_documents(folder)}


def test_cache_resumes_after_an_interruption(i2d, tiny_assets, tmp_path):
    whole = cache(i2d, tiny_assets, tmp_path / "whole", "--shard-size", "4", "--batch-size", "3")
    assert whole["samples"] == 13 and whole["skipped"] == 3 and len(whole["shards"]) == 4
    assert whole["latents"]["tokenizer"] == tokenizer_identity(load_image_tokenizer(tiny_assets / "image"))
    assert whole["latents"]["shape"] == [4, 4, 4] and whole["latents"]["image_size"] == 16

    tok = load_image_tokenizer(tiny_assets / "image")
    opts = ReadOptions(16, 16)  # what cache_latents.py reads with at --image-size 16
    part = LatentCache(
        tmp_path / "part", tok, 16, source=f"img2dataset:{i2d}", shard_size=4, batch_size=3, options=asdict(opts)
    )
    items, _, _ = read_items(f"img2dataset:{i2d}", opts)

    with pytest.raises(KeyboardInterrupt):
        part.run(interrupted(items, 6))
    state = json.loads((tmp_path / "part" / "cache_state.json").read_text())
    assert list(state["shards"].values()) == [4] and not (tmp_path / "part" / "index.json").exists()
    resumed = cache(i2d, tiny_assets, tmp_path / "part", "--shard-size", "4", "--batch-size", "3")
    assert {k: resumed[k] for k in ("samples", "skipped", "shards")} == {
        k: whole[k] for k in ("samples", "skipped", "shards")
    }
    a, b = latents_by_key(tmp_path / "whole"), latents_by_key(tmp_path / "part")
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(DataError, match=r"made with other settings \(differs in image_size, shape\): use another"):
        LatentCache(tmp_path / "part", tok, 32, source=f"img2dataset:{i2d}", options=asdict(opts))


def run_config(assets: Path, out: Path, *overrides: str) -> RunConfig:
    return load_config(
        RunConfig,
        None,
        [
            f"text_tokenizer={assets / 'text'}",
            f"image_tokenizer={assets / 'image'}",
            "model.depth=2",
            "data.image_size=16",
            "data.seq_len=96",
            "data.rows=2",
            "data.shuffle_buffer=1",
            f"train.output_dir={out}",
            "train.steps=100",
            "train.log_every=1",
            "train.sample_every=0",
            "train.ckpt_every=0",
            *overrides,
        ],
    )


def test_training_from_cached_latents_equals_encoding_on_the_fly(i2d, tiny_assets, tmp_path):
    from mmgen.train.loop import Trainer

    items, _, _ = read_items(f"img2dataset:{i2d}", ReadOptions())  # the files' bytes, as stored
    one = tmp_path / "one"
    assert write_img2dataset((it.doc for it in items), one, per_shard=100) == 14  # + the 12x40 image
    cache(one, tiny_assets, tmp_path / "cache", "--shard-size", "100")  # one shard each: both read in stored order
    losses = {}
    for name, data in (
        ("fly", ["data.source=img2dataset", f"data.path={one}"]),
        ("cached", ["data.source=shards", f"data.shards={tmp_path / 'cache'}", "data.latents=true"]),
    ):
        trainer = Trainer(run_config(tiny_assets, tmp_path / name, *data))
        torch.manual_seed(0)
        losses[name] = [trainer.train_step([next(it)])["loss"] for it in [iter(trainer.data)] for _ in range(2)]
    assert losses["cached"] == pytest.approx(losses["fly"], rel=1e-5)


def test_latents_of_another_tokenizer_or_none_are_refused(i2d, tiny_assets, other_tok, tmp_path):
    from mmgen.train.build import load_tokenizers

    cache(i2d, tiny_assets, tmp_path / "cache", "--limit", "4")
    sha = tokenizer_identity(load_image_tokenizer(other_tok))["sha256"][:12]
    cfg = run_config(
        tiny_assets,
        tmp_path / "r",
        "data.source=shards",
        f"data.shards={tmp_path / 'cache'}",
        "data.latents=true",
        f"image_tokenizer={other_tok}",
    )
    with pytest.raises(
        DataError,
        match=rf"made by image tokenizer 'tiny' \(sha256 \w{{12}}\), this run uses 'tiny' "
        rf"\(sha256 {sha}\): set image_tokenizer to the one that made them",
    ):
        load_tokenizers(cfg)
    prepare(i2d, tmp_path / "pixels")
    cfg = run_config(
        tiny_assets, tmp_path / "r", "data.source=shards", f"data.shards={tmp_path / 'pixels'}", "data.latents=true"
    )
    with pytest.raises(DataError, match="holds images, not cached latents"):
        load_tokenizers(cfg)
    from mmgen.train.loop import Trainer

    cfg = run_config(tiny_assets, tmp_path / "r", "data.source=shards", f"data.shards={tmp_path / 'cache'}")
    with pytest.raises(
        DataError, match=r"hold cached latents \(scripts/cache_latents.py\), not images: set data.latents"
    ):
        next(iter(Trainer(cfg).data))


def test_prepare_data_source_writes_images_or_latents_and_counts_bad_samples(i2d, tiny_assets, tmp_path):
    index = prepare(i2d, tmp_path / "px", "--shard-size", "5", "--min-image-size", "16")
    assert index["samples"] == 13 and index["skipped"] == 3 and len(index["shards"]) == 3
    docs = list(read_documents(tmp_path / "px"))
    assert len(docs) == 13 and all(d.images[0].fmt == "jpg" for d in docs)  # the files' bytes, not re-encoded
    index = prepare_latents(i2d, tiny_assets, tmp_path / "lat")
    assert index["samples"] == 13 and index["skipped"] == 3 and index["latents"]["shape"] == [4, 4, 4]
    assert sorted(latents_by_key(tmp_path / "lat")) == sorted(d.key for d in docs)


def test_restart_leaves_no_latents_of_the_old_tokenizer_for_training(i2d, tiny_assets, other_tok, tmp_path):
    """A re-cache removes the old index, state and shards first; training reads only the shards the index
    lists, refuses any other tar, and each document names the tokenizer that made its latents."""
    from mmgen.train.loop import Trainer

    out, spare = tmp_path / "cache", tmp_path / "spare"
    cache(i2d, tiny_assets, out, "--shard-size", "4")  # tokenizer A: 4 shards
    cache(i2d, tiny_assets, spare, "--shard-size", "4")
    sha_b = cache(i2d, tiny_assets, out, "--shard-size", "8", "--restart", tok=other_tok)["latents"]["tokenizer"][
        "sha256"
    ]
    assert sorted(f.name for f in out.iterdir()) == [
        "cache_state.json",
        "index.json",
        "latents-000000.tar",
        "latents-000001.tar",
    ]
    assert {d.meta["image_tokenizer_sha256"] for d in read_documents(out)} == {sha_b}

    # an interrupted restart with A: B's index is gone at once, so nothing trains on the half-written cache
    tok_a = load_image_tokenizer(tiny_assets / "image")
    opts = ReadOptions(16, 16)
    part = LatentCache(out, tok_a, 16, source=f"img2dataset:{i2d}", shard_size=4, restart=True, options=asdict(opts))
    items, _, _ = read_items(f"img2dataset:{i2d}", opts)
    with pytest.raises(KeyboardInterrupt):
        part.run(interrupted(items, 5))
    assert sorted(f.name for f in out.iterdir()) == ["cache_state.json", "latents-000000.tar"]
    cfg = run_config(tiny_assets, tmp_path / "r", "data.source=shards", f"data.shards={out}", "data.latents=true")
    with pytest.raises(DataError, match=r"data.latents: no index.json in .*, so nothing says which tokenizer"):
        Trainer(cfg)

    cache(i2d, tiny_assets, out, "--shard-size", "4")  # resumed and finished with A
    shutil.copy(spare / "latents-000003.tar", out / "latents-000009.tar")  # a tar the index does not list
    with pytest.raises(
        DataError,
        match=r"1 tar\(s\) in .* are not listed in its index.json \(first: .*latents-000009"
        r".tar\), so nothing says which tokenizer made them",
    ):
        Trainer(cfg)
    (out / "latents-000009.tar").unlink()
    b_out = tmp_path / "b"
    cache(i2d, tiny_assets, b_out, "--shard-size", "4", tok=other_tok)
    shutil.copy(b_out / "latents-000001.tar", out / "latents-000001.tar")  # a listed shard overwritten by B's
    with pytest.raises(
        DataError,
        match=r"holds latents of another image tokenizer \(sha256 \w{12}; expected "
        r"\w{12}\): its shard is not the cache's",
    ):
        list(itertools.islice(Trainer(cfg).data, 8))


def test_a_resumed_limited_cache_reads_as_many_documents_and_the_same_options(i2d, tiny_assets, tmp_path, monkeypatch):
    monkeypatch.setenv("MMGEN_DEBUG", "1")  # the scripts raise their errors instead of exiting
    whole = cache(i2d, tiny_assets, tmp_path / "whole", "--shard-size", "3", "--limit", "8")
    tok = load_image_tokenizer(tiny_assets / "image")
    opts = ReadOptions(16, 16)
    part = LatentCache(tmp_path / "part", tok, 16, source=f"img2dataset:{i2d}", shard_size=3, options=asdict(opts))
    items, _, _ = read_items(f"img2dataset:{i2d}", opts)
    with pytest.raises(KeyboardInterrupt):  # after 2 shards (6 documents, 1 bad sample skipped before them)
        part.run(interrupted(items, 7), limit=8)
    assert json.loads((tmp_path / "part" / "cache_state.json").read_text())["read"] == 6
    with pytest.raises(DataError, match=r"made with other settings \(differs in options\)"):
        cache(i2d, tiny_assets, tmp_path / "part", "--shard-size", "3", "--limit", "8", "--min-image-size", "8")
    resumed = cache(i2d, tiny_assets, tmp_path / "part", "--shard-size", "3", "--limit", "8")
    assert resumed["samples"] == whole["samples"] == 8 and resumed["skipped"] == whole["skipped"]
    assert sorted(latents_by_key(tmp_path / "part")) == sorted(latents_by_key(tmp_path / "whole"))


def test_a_corrupt_image_skips_its_document_when_caching(tiny_assets, tmp_path):
    """A named source hands over the files' bytes undecoded: the cache decodes them one document at a time."""
    good = [Document(f"ok{i}", ["a red one", Image(data=image_bytes("red"), fmt="jpg")]) for i in range(3)]
    bad = Document("broken", ["a broken one", Image(data=b"not a jpeg", fmt="jpg")])
    cache = LatentCache(tmp_path / "lat", load_image_tokenizer(tiny_assets / "image"), 16, source="test", batch_size=2)
    index = cache.run(Item(d, 0, 0, i) for i, d in enumerate([good[0], bad, *good[1:]]))
    assert index["samples"] == 3 and index["skipped"] == 1 and index["skipped_examples"][0][0] == "broken"
    assert "cannot decode image" in index["skipped_examples"][0][1]
    assert sorted(latents_by_key(tmp_path / "lat")) == ["ok0", "ok1", "ok2"]


def test_prepare_data_latents_resume_or_restart(i2d, tiny_assets, tmp_path, monkeypatch):
    monkeypatch.setenv("MMGEN_DEBUG", "1")
    prepare_latents(i2d, tiny_assets, tmp_path / "lat")
    with pytest.raises(DataError, match=r"differs in options\): use another --out, or --restart to overwrite it"):
        prepare_latents(i2d, tiny_assets, tmp_path / "lat", "--limit", "5")
    assert prepare_latents(i2d, tiny_assets, tmp_path / "lat", "--limit", "5", "--restart")["samples"] == 5
