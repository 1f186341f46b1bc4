"""The static KV cache: chunked forwards equal one full forward; scratch forwards leave the cache unchanged."""

from __future__ import annotations

import pytest
import torch
from helpers import _inputs, _randomize, tiny_config

from mmgen.data.plan import KIND_TEXT
from mmgen.models.kv_cache import ContextOverflow, KVCache
from mmgen.models.model import MMGenModel


def _slice(x: dict, a: int, b: int) -> dict:
    out = {}
    for k, v in x.items():
        out[k] = v[:, :, a:b] if k == "pos" else v[:, a:b]
    return out


def _valid_cuts(batch) -> list[int]:
    """Positions where no row splits an image copy (a copy is attended bidirectionally, so it is always
    forwarded whole; text can be cut anywhere)."""
    im, kind = batch.image, batch.kind
    inside = (im[:, 1:] >= 0) & (im[:, 1:] == im[:, :-1]) & (kind[:, 1:] == kind[:, :-1])
    return [c for c in range(1, im.shape[1]) if not inside[:, c - 1].any()]


@pytest.mark.parametrize("pick, grow", [([5, 20], False), ([0, 1, 2, 3, 30], True), ([], False)])
def test_chunked_cached_forward_equals_full_forward(batch, pick, grow):
    """grow: the cache starts at 4 slots and reallocates as the chunks arrive."""
    valid = _valid_cuts(batch)
    assert len(valid) > 30
    cuts = [valid[i] for i in pick] + [batch.doc.shape[1]]
    cfg = tiny_config()
    model = MMGenModel(cfg).eval()
    _randomize(model)
    x = _inputs(batch, cfg, uncond_every=3)
    with torch.no_grad():
        full = model(**x)
        B = x["input_ids"].shape[0]
        cache = (
            KVCache.for_model(model, batch=B, capacity=4) if grow else KVCache.for_model(model, batch=B, max_len=200)
        )
        logits, images, a = [], [], 0
        for b in cuts:
            out = model(**_slice(x, a, b), cache=cache)
            if out.logits is not None:
                logits.append(out.logits.view(-1, cfg.vocab_size))
            images.append(
                out.image if out.image is not None else torch.zeros(x["input_ids"].shape[0], b - a, cfg.patch_dim)
            )
            a = b
    assert cache.length == 160 and cache.capacity >= 160
    text = batch.kind == KIND_TEXT
    # logits come back row-major per chunk; reorder the full forward's the same way
    order = torch.cat([text[:, a:b].nonzero() + torch.tensor([0, a]) for a, b in zip([0] + cuts[:-1], cuts)])
    full_by_pos = torch.zeros(*text.shape, cfg.vocab_size)
    full_by_pos[text] = full.logits
    torch.testing.assert_close(torch.cat(logits), full_by_pos[order[:, 0], order[:, 1]], rtol=1e-4, atol=1e-4)
    img = ~text
    torch.testing.assert_close(torch.cat(images, dim=1)[img], full.image[img], rtol=1e-4, atol=1e-4)


def _model_and_inputs(batch):
    cfg = tiny_config()
    model = MMGenModel(cfg).eval()
    _randomize(model)
    return model, _inputs(batch, cfg)


def test_scratch_forward_keeps_cache(batch):
    model, x = _model_and_inputs(batch)
    with torch.no_grad():
        cache = KVCache.for_model(model, batch=3, max_len=160)
        model(**_slice(x, 0, 100), cache=cache)
        k_before = cache.k[:, :, :, :100].clone()
        with cache.scratch():
            first = model(**_slice(x, 100, 120), cache=cache).image
            second = model(**_slice(x, 100, 120), cache=cache).image
        assert cache.length == 100 and torch.equal(cache.k[:, :, :, :100], k_before)
        torch.testing.assert_close(first, second)
        with pytest.raises(ContextOverflow, match="exceed the context of 160"):
            model(**_slice(x, 0, 100), cache=cache)


def test_growing_inside_scratch_keeps_the_prefix(batch):
    """A scratch forward that needs more slots than allocated grows the cache; the kept prefix survives and
    the result equals that of a cache that was large enough from the start."""
    model, x = _model_and_inputs(batch)
    with torch.no_grad():
        roomy = KVCache.for_model(model, batch=3, max_len=160)
        tight = KVCache.for_model(model, batch=3, capacity=100)
        for cache in (roomy, tight):
            model(**_slice(x, 0, 100), cache=cache)
        with roomy.scratch(), tight.scratch():
            want = model(**_slice(x, 100, 120), cache=roomy).image
            got = model(**_slice(x, 100, 120), cache=tight).image
        assert tight.length == 100 and tight.capacity >= 120
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tight.k[:, :, :, :100], roomy.k[:, :, :, :100])
