"""Bit accounting: the design's two numbers, published presets, trained tokenizers, code-usage entropy."""

from __future__ import annotations

import math

import pytest
import torch

from mmgen.config import ImageTokenizerRecipe
from mmgen.tokenizer.image import ImageTokenizer
from mmgen.tokenizer_study.bits import PRESETS, TokenBits, effective_compression, tokenizer_bits
from mmgen.tokenizer_study.metrics import code_usage, grouped_usage


def test_design_numbers_exactly():
    discrete, continuous = PRESETS["design-video-discrete"], PRESETS["design-video-continuous"]
    assert discrete.bits_in == continuous.bits_in == 6144  # 4 x 8 x 8 pixels x 3 channels x 8 bits
    assert discrete.bits_out == 15 and discrete.compression == 409.6
    assert continuous.bits_out == 128 and continuous.compression == 48


@pytest.mark.parametrize(
    "name, bits_out, compression",
    [
        ("sd-vae", 64, 24),
        ("flux-vae", 256, 6),
        ("cosmos-ci-8x8", 256, 6),
        ("cosmos-di-8x8", 3 * 3 + 3 * math.log2(5), 1536 / (9 + 3 * math.log2(5))),
        ("llamagen-vq16", 14, 6144 / 14),
    ],
)
def test_published_presets(name, bits_out, compression):
    assert PRESETS[name].bits_out == pytest.approx(bits_out, rel=1e-12)
    assert PRESETS[name].compression == pytest.approx(compression, rel=1e-12)
    assert PRESETS["cosmos-di-8x8"].codes == 64000


def test_trained_tokenizer_bits_follow_its_bottleneck():
    base = dict(name="t", downsample=8, width=8, crop_size=16)
    kl = tokenizer_bits(ImageTokenizer(ImageTokenizerRecipe(kind="kl", latent_channels=4, **base)))
    vq = tokenizer_bits(ImageTokenizer(ImageTokenizerRecipe(kind="vq", codebook_size=16384, **base)))
    fsq = tokenizer_bits(ImageTokenizer(ImageTokenizerRecipe(kind="fsq", levels=[8, 5, 5, 5], **base)))
    assert (kl.bits_in, kl.bits_out, kl.compression) == (1536, 64, 24)
    assert (vq.bits_out, fsq.codes) == (14, 1000)
    assert fsq.bits_out == pytest.approx(math.log2(1000))
    k4 = tokenizer_bits(ImageTokenizer(ImageTokenizerRecipe(kind="kl", **base)), dtype_bits=4)
    assert k4.bits_out == 16 and k4.compression == 96


def test_effective_bits_from_code_usage():
    uniform = code_usage(torch.arange(1024) % 256, 1024)  # 256 of 1024 codes, equally often
    assert uniform["entropy_bits"] == pytest.approx(8.0) and uniform["perplexity"] == pytest.approx(256)
    assert (uniform["codes_used"], uniform["usage"], uniform["nominal_bits"]) == (256, 0.25, 10.0)
    assert code_usage(torch.zeros(100, dtype=torch.long), 16)["entropy_bits"] == 0.0
    bits = TokenBits("x", "vq", 8, codebook_size=1024)
    assert effective_compression(bits, 8.0) == 1536 / 8
    two = grouped_usage(torch.stack([torch.arange(64) % 4, torch.arange(64) % 8], dim=1), 8)
    assert two["entropy_bits"] == pytest.approx(2 + 3) and two["groups"] == 2
    with pytest.raises(ValueError):
        effective_compression(bits, 0.0)


def test_invalid_token_bits_raise():
    with pytest.raises(ValueError, match="kind"):
        TokenBits("x", "scalar", 8)
    with pytest.raises(ValueError, match="codebook_size"):
        TokenBits("x", "vq", 8, codebook_size=1)
    with pytest.raises(ValueError, match="levels"):
        TokenBits("x", "fsq", 8, levels=(8, 1))


def test_bits_cli_prints_presets(capsys):
    import json

    from helpers import run_script

    assert run_script("bits", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert run_script("bits") == 0
    out = capsys.readouterr().out
    assert {r["name"]: r["compression"] for r in rows}["design-video-discrete"] == 409.6
    assert "409.6" in out and "48.0" in out and "llamagen-vq16" in out
