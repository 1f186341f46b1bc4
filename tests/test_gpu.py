"""GPU tests (`pytest -m gpu`, step 1 of scripts/gpu_check.sh): flex == sdpa in bf16 on a packed multi-document
batch (forward and gradients), compiled blocks == eager, cached sampling == recompute, a training step finite.

Without CUDA they skip, unless MMGEN_GPU_TESTS_ON_CPU=1 (what `scripts/gpu_check.sh --cpu` sets): then they run
on the CPU at tiny sizes, with the CPU's substitutes named where they differ (torch's eager FlexAttention with
its CPU guard lifted for gradients, `aot_eager` instead of inductor, no compile in the training step).
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch
from conftest import tiny_model, tiny_sizes
from helpers import _inputs, _randomize, compiled_equals_eager, flex_cpu_backward, packed, tiny_run

from mmgen.config import ModelConfig
from mmgen.data.plan import KIND_NOISY
from mmgen.models.kv_cache import KVCache
from mmgen.models.model import MMGenConfig, MMGenModel
from mmgen.sampling.interleaved import InterleavedSampler
from mmgen.sampling.rows import cat_plans, image_plan
from mmgen.tokenizer.text import SPECIAL_IDS

pytestmark = pytest.mark.gpu
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def dev() -> torch.device:
    if CUDA:
        return torch.device("cuda")
    if os.environ.get("MMGEN_GPU_TESTS_ON_CPU") == "1":
        torch.set_num_threads(1)
        return torch.device("cpu")
    pytest.skip("needs CUDA (MMGEN_GPU_TESTS_ON_CPU=1 runs these on the CPU at tiny sizes)")


def small_config(vocab: int, seq_len: int, **model) -> MMGenConfig:
    """A GPU-shaped small model on CUDA (heads of 64), the tiny one on the CPU."""
    m = ModelConfig(depth=2, aspect_ratio=128 if CUDA else 32, head_dim=64 if CUDA else 16, **model)
    return MMGenConfig.from_model_config(
        m,
        vocab_size=vocab,
        latent_channels=4,
        image_size=16,
        downsample=4,
        seq_len=seq_len,
        sigma_d=0.5,
        image_objective="imm",
        special_ids=SPECIAL_IDS,
    )


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def test_flex_equals_sdpa_bf16_packed(dev, text_tokenizer):
    """bf16 autocast over fp32 weights, rows packing many documents (1024 tokens on CUDA: the fused kernel skips
    cross-document tiles): outputs and gradients of the two backends agree to bf16 rounding (relative L2 error
    below 2 % for outputs, 5 % for each parameter's gradient; fp32 agrees to 1e-5, tests/test_gpu_path.py)."""
    L = 1024 if CUDA else 160
    b = packed(text_tokenizer, rows=2, seq_len=L)
    assert int(b.doc.max()) >= 6
    res = {}
    for backend in ("sdpa", "flex"):
        torch.manual_seed(0)
        model = MMGenModel(small_config(len(text_tokenizer), L, attention=backend))
        _randomize(model)
        model.to(dev)
        x = {k: v.to(dev) for k, v in _inputs(b, model.config, uncond_every=3).items()}
        with flex_cpu_backward(), torch.autocast(dev.type, torch.bfloat16):
            out = model(**x)
            loss = out.logits.float().pow(2).mean() + out.image.float().pow(2).mean()
        loss.backward()
        res[backend] = (out, {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None})
    (o_s, g_s), (o_f, g_f) = res["sdpa"], res["flex"]
    assert rel_err(o_f.logits, o_s.logits) < 0.02 and rel_err(o_f.image, o_s.image) < 0.02
    worst = max(g_s, key=lambda n: rel_err(g_f[n], g_s[n]))
    assert rel_err(g_f[worst], g_s[worst]) < 0.05, f"{worst}: {rel_err(g_f[worst], g_s[worst]):.4f}"


def test_compiled_blocks_equal_eager(dev, batch):
    """The `train.compile` path (inductor on CUDA; graph capture with aot_eager on the CPU dry run) gives the
    eager forward and gradients, with no graph break."""
    compiled_equals_eager(
        small_config(320, 160),
        batch,
        dev,
        {} if CUDA else {"backend": "aot_eager"},
        out_tol=(1e-3, 1e-4),
        grad_tol=(1e-2, 1e-4),
    )


def test_cached_sampling_step_equals_recompute(dev, tiny_assets):
    """One sampler step (conditional + unconditional noisy copies, CFG) over the prefix KV cache (prefill with
    the model's attention, flex on CUDA) equals one uncached forward over prefix + <boi> + noisy copies."""
    text, image, model = tiny_model(
        tiny_assets, **tiny_sizes(depth=2, width=128, head_dim=32, image_size=16, max_seq_len=320)
    )
    _randomize(model.eval(), seed=2)
    s = InterleavedSampler(model.to(dev), text, image.to(dev))
    seen = []
    real = s.forward
    s.forward = lambda plan, cache, logits_at=None: seen.append(replace(plan)) or real(plan, cache, logits_at)
    with torch.no_grad():
        cache = KVCache.for_model(model, 1, capacity=64)
        _, pos, n_img = s.prefill([s.encode_prompt(["a small blue square left of a large green circle"])], cache)
        rows = torch.ones(1, dtype=torch.bool)
        s.feed_tokens(torch.tensor([SPECIAL_IDS["boi"]]), rows, pos, cache)
        pos = [pos[0] + 1]
        both = cat_plans(
            image_plan(model.config, rows, pos, n_img, KIND_NOISY, False, dev),
            image_plan(model.config, rows, pos, n_img, KIND_NOISY, True, dev),
        )
        n = both.shape[1]
        g = torch.Generator().manual_seed(0)
        both.image_tokens = torch.randn(1, n, model.config.patch_dim, generator=g).to(dev)
        both.t, both.s = torch.full((1, n), 0.7, device=dev), torch.full((1, n), 0.3, device=dev)
        with cache.scratch():
            cached = s.forward(both, cache).image
        for c in seen[:2]:  # prefill and <boi> plans: clean times
            c.t, c.s = torch.zeros_like(c.uncond, dtype=torch.float), torch.zeros_like(c.uncond, dtype=torch.float)
        full = cat_plans(cat_plans(seen[0], seen[1]), both)
        recomputed = s.forward(full, None).image[:, -n:]
    torch.testing.assert_close(cached, recomputed, rtol=1e-3, atol=1e-4)


def test_training_step_finite(dev, tiny_assets, tmp_path):
    """Three steps of the real trainer with the GPU defaults (bf16 autocast, flex, compiled blocks on CUDA;
    bf16 and sdpa on the CPU dry run, where compiling would take minutes): finite, never skipped, fp32 weights."""
    from accelerate.state import AcceleratorState

    from mmgen.train.loop import Trainer

    AcceleratorState._reset_state(True)
    try:
        cfg = tiny_run(
            tiny_assets,
            tmp_path / "run",
            "data.seq_len=256",
            "train.precision=bf16",
            f"train.compile={'true' if CUDA else 'false'}",
            "train.steps=4",
        )
        tr = Trainer(cfg)
        assert tr.engine.device.type == dev.type
        assert tr.engine.unwrapped.attention_backend() == ("flex" if CUDA else "sdpa")
        last = tr.train(max_steps=3)  # stops before the end-of-run sampling and release
    finally:
        AcceleratorState._reset_state(True)
    assert tr.step == 3 and not last["skipped"]
    assert all(torch.isfinite(torch.tensor(last[k])) for k in ("loss", "text_loss", "image_loss", "grad_norm"))
    assert all(p.dtype == torch.float32 for p in tr.engine.unwrapped.parameters())
