"""Cached latents: training from them equals encoding on the fly, the cache resumes exactly, and latents of
another tokenizer (or none) are refused with a message that says what to do."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from test_external_data import write_img2dataset_fixture

from mmgen.config import RunConfig, load_config
from mmgen.data.external import ReadOptions, read_items
from mmgen.data.img2dataset import write_img2dataset
from mmgen.data.latent_cache import LatentCache, tokenizer_identity
from mmgen.data.shards import read_documents
from mmgen.errors import DataError
from mmgen.tokenizer.image import ImageTokenizer, load_image_tokenizer


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def i2d(tmp_path_factory):
    """13 good and 3 bad samples in 4 img2dataset tars."""
    root = tmp_path_factory.mktemp("i2d")
    write_img2dataset_fixture(root)
    return root


def cache(i2d: Path, assets: Path, out: Path, *flags: str) -> dict:
    return script("cache_latents").main(["--source", f"img2dataset:{i2d}", "--tokenizer", str(assets / "image"),
                                         "--image-size", "16", "--out", str(out), *flags])  # fmt: skip


def latents_by_key(folder: Path) -> dict[str, np.ndarray]:
    return {d.key: d.images[0].latents for d in read_documents(folder)}


def test_cache_resumes_after_an_interruption(i2d, tiny_assets, tmp_path):
    whole = cache(i2d, tiny_assets, tmp_path / "whole", "--shard-size", "4", "--batch-size", "3")
    assert whole["samples"] == 13 and whole["skipped"] == 3 and len(whole["shards"]) == 4
    assert whole["latents"]["tokenizer"] == tokenizer_identity(load_image_tokenizer(tiny_assets / "image"))
    assert whole["latents"]["shape"] == [4, 4, 4] and whole["latents"]["image_size"] == 16

    tok = load_image_tokenizer(tiny_assets / "image")
    part = LatentCache(tmp_path / "part", tok, 16, source=f"img2dataset:{i2d}", shard_size=4, batch_size=3)
    items, _, _ = read_items(f"img2dataset:{i2d}", ReadOptions(16, 16))

    def crash_after_six():
        for n, item in enumerate(items):
            if n == 6:
                raise KeyboardInterrupt
            yield item

    with pytest.raises(KeyboardInterrupt):
        part.run(crash_after_six())
    state = json.loads((tmp_path / "part" / "cache_state.json").read_text())
    assert list(state["shards"].values()) == [4] and not (tmp_path / "part" / "index.json").exists()
    resumed = cache(i2d, tiny_assets, tmp_path / "part", "--shard-size", "4", "--batch-size", "3")
    assert {k: resumed[k] for k in ("samples", "skipped", "shards")} == {k: whole[k] for k in ("samples", "skipped", "shards")}
    a, b = latents_by_key(tmp_path / "whole"), latents_by_key(tmp_path / "part")
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(DataError, match=r"made with other settings \(differs in image_size, shape\): use another"):
        LatentCache(tmp_path / "part", tok, 32, source=f"img2dataset:{i2d}")


def run_config(assets: Path, out: Path, *overrides: str) -> RunConfig:
    return load_config(RunConfig, None, [
        f"text_tokenizer={assets / 'text'}", f"image_tokenizer={assets / 'image'}", "model.depth=2",
        "data.image_size=16", "data.seq_len=96", "data.rows=2", "data.shuffle_buffer=1", f"train.output_dir={out}",
        "train.steps=100", "train.log_every=1", "train.sample_every=0", "train.ckpt_every=0", *overrides])  # fmt: skip


def test_training_from_cached_latents_equals_encoding_on_the_fly(i2d, tiny_assets, tmp_path):
    from mmgen.train.loop import Trainer

    items, _, _ = read_items(f"img2dataset:{i2d}", ReadOptions())  # the files' bytes, as stored
    one = tmp_path / "one"
    assert write_img2dataset((it.doc for it in items), one, per_shard=100) == 14  # + the 12x40 image
    cache(one, tiny_assets, tmp_path / "cache", "--shard-size", "100")  # one shard each: both read in stored order
    losses = {}
    for name, data in (("fly", ["data.source=img2dataset", f"data.path={one}"]),
                       ("cached", ["data.source=shards", f"data.shards={tmp_path / 'cache'}", "data.latents=true"])):
        trainer = Trainer(run_config(tiny_assets, tmp_path / name, *data))
        torch.manual_seed(0)
        losses[name] = [trainer.train_step([next(it)])["loss"] for it in [iter(trainer.data)] for _ in range(2)]
    assert losses["cached"] == pytest.approx(losses["fly"], rel=1e-5)


def test_latents_of_another_tokenizer_or_none_are_refused(i2d, tiny_assets, tmp_path):
    from mmgen.train.build import load_tokenizers

    cache(i2d, tiny_assets, tmp_path / "cache", "--limit", "4")
    torch.manual_seed(1)
    other = ImageTokenizer(load_image_tokenizer(tiny_assets / "image").recipe)
    other.save_pretrained(tmp_path / "other")
    sha = tokenizer_identity(other)["sha256"][:12]
    cfg = run_config(tiny_assets, tmp_path / "r", "data.source=shards", f"data.shards={tmp_path / 'cache'}",
                     "data.latents=true", f"image_tokenizer={tmp_path / 'other'}")  # fmt: skip
    with pytest.raises(DataError, match=rf"made by image tokenizer 'tiny' \(sha256 \w{{12}}\), this run uses 'tiny' "
                                        rf"\(sha256 {sha}\): set image_tokenizer to the one that made them"):  # fmt: skip
        load_tokenizers(cfg)
    script("prepare_data").main(["--source", f"img2dataset:{i2d}", "--out", str(tmp_path / "pixels")])
    cfg = run_config(tiny_assets, tmp_path / "r", "data.source=shards", f"data.shards={tmp_path / 'pixels'}",
                     "data.latents=true")  # fmt: skip
    with pytest.raises(DataError, match="holds images, not cached latents"):
        load_tokenizers(cfg)
    from mmgen.train.loop import Trainer

    cfg = run_config(tiny_assets, tmp_path / "r", "data.source=shards", f"data.shards={tmp_path / 'cache'}")
    with pytest.raises(DataError, match=r"hold cached latents \(scripts/cache_latents.py\), not images: set data.latents"):
        next(iter(Trainer(cfg).data))


def test_prepare_data_source_writes_images_or_latents_and_counts_bad_samples(i2d, tiny_assets, tmp_path):
    prepare = script("prepare_data")
    index = prepare.main(["--source", f"img2dataset:{i2d}", "--out", str(tmp_path / "px"), "--shard-size", "5",
                          "--min-image-size", "16"])  # fmt: skip
    assert index["samples"] == 13 and index["skipped"] == 3 and len(index["shards"]) == 3
    docs = list(read_documents(tmp_path / "px"))
    assert len(docs) == 13 and all(d.images[0].fmt == "jpg" for d in docs)  # the files' bytes, not re-encoded
    index = prepare.main(["--source", f"img2dataset:{i2d}", "--out", str(tmp_path / "lat"), "--latents",
                          str(tiny_assets / "image"), "--image-size", "16"])  # fmt: skip
    assert index["samples"] == 13 and index["skipped"] == 3 and index["latents"]["shape"] == [4, 4, 4]
    assert sorted(latents_by_key(tmp_path / "lat")) == sorted(d.key for d in docs)
