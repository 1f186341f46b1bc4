"""Readers of the real data sets (skipped with a message when $MMGEN_DATA does not hold them)."""

from __future__ import annotations

import itertools

import pytest
from conftest import real_data

from mmgen.data import sources
from mmgen.data.documents import Image


def test_cifar10_caption_and_label():
    real_data("cifar10/cifar10_test_jpg.zip")
    docs = list(itertools.islice(sources.cifar10("test", layout="both"), 0, 4000, 997))
    for d in docs:
        img = next(s for s in d.segments if isinstance(s, Image))
        cap = next(s for s in d.segments if isinstance(s, str))
        assert cap == f"a photo of a {img.meta['class']}"
        assert sources.CIFAR10_CLASSES[img.meta["label"]] == img.meta["class"]
        assert img.rgb().shape == (32, 32, 3) and img.fmt == "jpg"


def test_flickr8k_five_captions_and_split():
    real_data("flickr8k_subset/flickr8k_1000_images.zip")
    train = list(sources.flickr8k("train", limit=10))
    assert len(train) == 10 and train[0].segments[0] == train[0].segments[1].meta["captions"][0]
    test_keys = {d.key.rsplit("-", 1)[0] for d in sources.flickr8k("test")}
    train_keys = {d.key.rsplit("-", 1)[0] for d in sources.flickr8k("train", limit=500)}
    assert len(test_keys) == 100 and not (test_keys & train_keys)


def test_mnist_digits():
    real_data("mnist/t10k-images-idx3-ubyte.gz")
    d = next(sources.mnist("test"))
    img = d.segments[1]
    assert d.segments[0] == f"a handwritten digit {img.meta['label']}" and img.rgb().shape == (28, 28, 3)


def test_text_corpora_latin1_and_chunks():
    real_data("text/gutenberg")
    docs = list(sources.text("gutenberg/chesterton-ball", chunk_chars=2000, limit=5))
    assert len(docs) == 5 and all(1000 < len(d.segments[0]) < 20000 for d in docs)
    assert sum(1 for _ in sources.sentences("text:tinyshakespeare", limit=100)) == 100


def test_missing_data_root_message(tmp_path, monkeypatch):
    monkeypatch.setenv("MMGEN_DATA", str(tmp_path))
    with pytest.raises(sources.DataNotFound, match="MMGEN_DATA"):
        next(sources.cifar10("train"))
    with pytest.raises(ValueError, match="unknown source"):
        sources.open_source("imagenet")
