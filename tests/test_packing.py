"""Packing and the token plan: labels, positions, copies, limits."""

from __future__ import annotations

import pytest
import torch

from mmgen.config import ShapesConfig
from mmgen.data.documents import Document
from mmgen.data.packing import IGNORE, KIND_CLEAN, KIND_NOISY, KIND_TEXT, Packer, PackSpec
from mmgen.data.shapes import ShapesGenerator
from mmgen.data.shards import Item
from mmgen.models.model import MMGenConfig


@pytest.fixture(scope="module")
def packer(text_tokenizer):
    return Packer(
        text_tokenizer, PackSpec.from_config(MMGenConfig(image_grid=(3, 4), image_size=32), rows=4, seq_len=128)
    )


def _items(docs):
    return [Item(d, 0, 0, i) for i, d in enumerate(docs)]


def test_plan_invariants(packer):
    sp = packer.spec
    docs = list(ShapesGenerator(ShapesConfig()).documents(0, 60))
    batches = list(packer.batches(_items(docs)))
    assert batches
    for b in batches:
        R, L = b.input_ids.shape
        assert (R, L) == (sp.rows, sp.seq_len) and b.pos.shape == (3, R, L)
        n_img = b.images.shape[0]
        assert b.images.shape[1:] == (3, 32, 32) and b.images.dtype == torch.uint8
        for r in range(R):
            for d in b.doc[r].unique().tolist():
                if d < 0:
                    continue
                m = b.doc[r] == d
                idx = m.nonzero().squeeze(1)
                assert (idx[1:] - idx[:-1] == 1).all(), "a document is contiguous"
                kind, ids, labels = b.kind[r, m], b.input_ids[r, m], b.labels[r, m]
                pos = b.pos[:, r, m]
                text = kind == KIND_TEXT
                # labels: the next text token, nothing after <boi> or </s>
                tids = ids[text]
                tl = labels[text]
                assert tids[0] == sp.bos and tids[-1] == sp.eos
                for j in range(len(tids) - 1):
                    want = IGNORE if tids[j] in (sp.boi, sp.eos) else tids[j + 1]
                    assert tl[j] == want
                assert tl[-1] == IGNORE and (labels[~text] == IGNORE).all()
                # text positions are (p, p, p) and increase
                assert (pos[0, text] == pos[1, text]).all() and (pos[0, text][1:] > pos[0, text][:-1]).all()
                assert pos[0, 0] == 0, "positions restart in every document"
                # each image: noisy copy (if a target) and clean copy at the same positions, full grid
                imgs = b.image[r, m]
                for i in imgs[imgs >= 0].unique().tolist():
                    assert 0 <= i < n_img
                    clean = (imgs == i) & (kind == KIND_CLEAN)
                    noisy = (imgs == i) & (kind == KIND_NOISY)
                    trailing = (imgs == i).nonzero().max() == len(imgs) - 3  # followed only by <eoi> </s>
                    assert clean.sum() == (0 if trailing and b.image_loss[i] else sp.image_tokens)
                    assert noisy.sum() == (sp.image_tokens if b.image_loss[i] else 0)
                    if noisy.any() and clean.any():
                        assert torch.equal(pos[:, noisy], pos[:, clean])
                    copy = clean if clean.any() else noisy
                    t0 = pos[0, copy][0]
                    assert (pos[0, copy] == t0).all()
                    assert torch.equal(pos[1, copy] - t0, torch.arange(sp.image_tokens) // 4)
                    assert torch.equal(pos[2, copy] - t0, torch.arange(sp.image_tokens) % 4)
        pad = b.doc < 0
        assert (b.labels[pad] == IGNORE).all() and (b.input_ids[pad] == sp.pad).all()


def test_cursor_points_at_first_unconsumed_document(packer):
    docs = list(ShapesGenerator(ShapesConfig()).documents(0, 80))
    seen = []
    for b in packer.batches(_items(docs)):
        nxt = b.cursor["index"]
        keys = b.keys
        assert keys == [d.key for d in docs[len(seen) : nxt]]
        seen += keys


def test_keep_last_packs_every_document_of_a_finite_stream_once(packer):
    docs = list(ShapesGenerator(ShapesConfig()).documents(0, 37))
    training = [k for b in packer.batches(_items(docs)) for k in b.keys]
    evaluation = [k for b in packer.batches(_items(docs), keep_last=True) for k in b.keys]
    assert evaluation == [d.key for d in docs]
    assert training == evaluation[: len(training)] and len(training) < len(docs)  # training drops the tail


def test_long_text_splits_and_oversized_image_is_reported(text_tokenizer):
    small = Packer(
        text_tokenizer, PackSpec.from_config(MMGenConfig(image_grid=(4, 4), image_size=32), rows=2, seq_len=40)
    )
    long_text = Document("long", [" ".join(["a small red circle"] * 20)])
    pieces = small.encode(long_text)
    assert len(pieces) > 1 and all(len(p) <= 40 for p in pieces)
    assert sum(len(p) for p in pieces) == len(text_tokenizer(long_text.segments[0]).input_ids) + 1  # + </s>
    img_doc = ShapesGenerator(ShapesConfig(p_image_caption=0, p_interleaved=0)).document(0)
    assert small.encode(img_doc, max_len=20) == []  # 16 image tokens + 4 specials + caption > 20
    out = list(
        Packer(
            text_tokenizer, PackSpec.from_config(MMGenConfig(image_grid=(4, 4), image_size=32), rows=2, seq_len=20)
        ).batches(_items([img_doc] + [long_text] * 3))
    )
    assert out and any(img_doc.key == k for k, _ in out[0].skipped)


@pytest.mark.parametrize("last", [True, False])
def test_a_document_that_fits_exactly_is_packed(text_tokenizer, last):
    """Caption then a target image: <s> caption <boi> noisy [clean] <eoi> [more text] </s>. A target that ends
    its document has no clean copy, so it needs 16 fewer tokens than one followed by text."""
    from mmgen.data.documents import Image

    packer = Packer(
        text_tokenizer, PackSpec.from_config(MMGenConfig(image_grid=(4, 4), image_size=32), rows=1, seq_len=256)
    )
    caption = " ".join(["a small red circle above a large blue square"] * 8)
    tail = [] if last else ["."]
    doc = Document("d", [caption, Image(pixels=torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()), *tail])
    n_caption = len(packer._text_ids(caption))
    n_tail = len(packer._text_ids(".")) if tail else 0
    need = 1 + n_caption + 1 + 16 * (1 if last else 2) + 1 + n_tail + 1
    (enc,) = packer.encode(doc, max_len=need)
    assert len(enc) == need and (enc.kind == KIND_CLEAN).sum() == (0 if last else 16)
    shorter = packer.encode(doc, max_len=need - 1)
    if last:
        assert shorter == []  # the image no longer fits after its caption
    else:
        assert len(shorter) == 1 and len(shorter[0]) < need  # the trailing text is dropped, the image kept
