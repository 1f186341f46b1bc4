"""The attention benchmark's candidates (mmgen/eval/attention.py): the packed-code mask is the model's mask, bit
for bit, and the script runs on the CPU (forward only: torch has no FlexAttention backward there)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_script

from mmgen.data.plan import KIND_NOISY, KIND_TEXT
from mmgen.eval.attention import packed_codes, packed_mask_mod
from mmgen.models.attention import MaskPlan, dense_mask


def test_packed_code_mask_equals_the_model_mask(batch):
    img = batch.kind != KIND_TEXT
    noisy_images = batch.image[batch.kind == KIND_NOISY].unique()
    uncond = img & torch.isin(batch.image, noisy_images[::2])  # every other noisy image's copies unconditional
    plan = MaskPlan(batch.doc, batch.kind, batch.image, uncond)
    B, L = batch.doc.shape
    assert (batch.doc < 0).any() and uncond.any()  # padding and isolated copies are exercised
    b = torch.arange(B)[:, None, None]
    q = torch.arange(L)[None, :, None]
    kv = torch.arange(L)[None, None, :]
    packed = packed_mask_mod(packed_codes(plan))(b, None, q, kv)
    assert torch.equal(packed, dense_mask(plan, L)[:, 0])


def test_packed_codes_refuse_overflow():
    doc = torch.full((1, 4), 1 << 15)
    zeros = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="too many documents"):
        packed_codes(MaskPlan(doc, zeros, zeros - 1, zeros.bool()))


def test_bench_attention_on_cpu(tmp_path, capsys):
    out = tmp_path / "att.json"
    args = ("--preset", "tiny", "--rows", "1", "--seq-len", "128", "--repeats", "1", "--out", str(out))
    assert run_script("bench_attention", *args, "--candidates", "sdpa-mask,flex,flex-packed") == 0
    rep = json.loads(out.read_text())
    assert list(rep["candidates"]) == ["sdpa-mask", "flex", "flex-packed"]
    assert all(r["ms"] > 0 for r in rep["candidates"].values()) and rep["visible_keys_per_query"] > 1
    assert run_script("bench_attention", *args, "--candidates", "flux") == 2
    assert "unknown candidate(s) flux" in capsys.readouterr().err
