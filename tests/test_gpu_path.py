"""The GPU path, checked on the CPU: `model.attention` (flex == sdpa through the model, forward and gradient,
tiles between packed documents skipped, one mask per batch, the sampler's prefill), bf16 autocast against fp32,
and `torch.compile` of the blocks (no graph breaks, no recompiles in the steady state, compiled == eager).

torch's FlexAttention has no backward on a CPU: its public entry refuses inputs that need gradients there. Its
eager reference implementation (what runs on a CPU) does have one, so the gradient test lifts that guard
(`flex_cpu_backward`); on a GPU the fused kernel's gradients are checked by tests/test_gpu.py.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import tiny_model, tiny_sizes
from helpers import (
    _inputs,
    _randomize,
    compiled_equals_eager,
    flex_cpu_backward,
    objective_setup,
    packed,
    tiny_config,
    tiny_run,
)

from mmgen.config import ConfigError, ModelConfig, load_config
from mmgen.data.plan import KIND_TEXT
from mmgen.models.attention import FLEX_BLOCK, AttentionMask, MaskPlan, resolve_backend
from mmgen.models.model import MMGenModel
from mmgen.sampling.interleaved import InterleavedSampler, SamplingOptions

torch.set_num_threads(1)


def test_attention_choice():
    assert resolve_backend("auto", "cpu") == "sdpa" and resolve_backend("auto", "cuda") == "flex"
    assert resolve_backend("flex", "cpu") == "flex" and resolve_backend("sdpa", "cuda") == "sdpa"
    with pytest.raises(ValueError, match="model.attention must be one of auto, sdpa, flex, got 'fast'"):
        resolve_backend("fast", "cpu")
    assert load_config(ModelConfig, None, ["attention=flex"]).attention == "flex"
    with pytest.raises(ConfigError, match="attention"):
        load_config(ModelConfig, None, ["attention=fast"])
    assert MMGenModel(tiny_config()).attention_backend("cpu") == "sdpa"  # auto on a CPU


@pytest.mark.parametrize("experts", ["mot", "dense"])
def test_flex_equals_sdpa_through_the_model(batch, experts):
    """Same weights, same packed multi-document batch (unconditional copies included): logits, image outputs
    and every parameter's gradient agree between the two backends."""
    assert int(batch.doc.max()) >= 3 * batch.doc.shape[0], "several documents per row"
    outs, grads = {}, {}
    for backend in ("sdpa", "flex"):
        torch.manual_seed(0)
        model = MMGenModel(tiny_config(experts=experts, attention=backend))
        _randomize(model)
        x = _inputs(batch, model.config, uncond_every=3)
        with flex_cpu_backward():
            out = model(**x)
            (out.logits.pow(2).mean() + out.image.pow(2).mean()).backward()
        assert model._masks.mask.backend == backend
        outs[backend] = out
        grads[backend] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(outs["flex"].logits, outs["sdpa"].logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs["flex"].image, outs["sdpa"].image, rtol=1e-4, atol=1e-5)
    assert grads["flex"].keys() == grads["sdpa"].keys() and len(grads["sdpa"]) > 20
    for n, g in grads["sdpa"].items():
        torch.testing.assert_close(grads["flex"][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_block_mask_skips_tiles_between_documents(text_tokenizer):
    """Rows of 512 tokens that pack many documents: a tile (128 queries x 128 keys) is computed only where some
    query and key share a document (read off the document ids, not the mask rule); most of the causal
    lower triangle is skipped."""
    b = packed(text_tokenizer, rows=2, seq_len=4 * FLEX_BLOCK)
    B, L = b.doc.shape
    plan = MaskPlan.of(b)  # every image copy conditional
    tiles = AttentionMask(plan, L, "flex").blocks.to_dense()[:, 0].bool()  # [B, L/128, L/128]
    n = L // FLEX_BLOCK
    doc = b.doc.view(B, n, FLEX_BLOCK)
    shares = (doc[:, :, None, :, None] == doc[:, None, :, None, :]) & (doc[:, :, None, :, None] >= 0)
    shares = shares.any(-1).any(-1) | torch.eye(n, dtype=torch.bool)  # padding sees itself on the diagonal
    assert not (tiles & ~shares).any(), "a tile between different documents is computed"
    causal = n * (n + 1) // 2
    assert int(tiles.sum()) < B * causal, "cross-document tiles of the causal triangle should be skipped"


def test_one_mask_per_batch():
    """Forwards given the same column tensors (IMM's two forwards of a batch: only the noisy copies' values
    and times change) share one mask, checked by identity without reading values back from the device; new
    tensors build a new mask, and an in-place edit of the caller's tensors (or of a view) is never missed."""
    torch.manual_seed(0)
    model = MMGenModel(tiny_config()).eval()
    B, L = 2, 24
    kind = torch.zeros(B, L, dtype=torch.long)
    doc = torch.arange(L).div(8, rounding_mode="floor").expand(B, L).clone()
    x = {
        "input_ids": torch.randint(6, 300, (B, L)),
        "kind": kind,
        "doc": doc,
        "image": torch.full((B, L), -1),
        "pos": torch.arange(L).expand(3, B, L),
        "uncond": torch.zeros(B, L, dtype=torch.bool),
    }
    with torch.no_grad():
        model(**x)
        first = model._masks.mask
        model(**{**x, "input_ids": torch.randint(6, 300, (B, L))})
        assert model._masks.mask is first
        model(**{**x, "uncond": None})  # another column: another mask (equal here: no image copies)
        assert model._masks.mask is not first and torch.equal(model._masks.mask.dense, first.dense)
        model(**{**x, "doc": doc.clone()})  # equal values in a new tensor: built again, not compared
        second = model._masks.mask
        assert second is not first and torch.equal(second.dense, first.dense)
        doc[:, 8:] = 0  # in place: now two documents per row
        model(**x)
        assert model._masks.mask is not second
        assert model._masks.mask.dense.sum() > first.dense.sum()
        third = model._masks.mask
        doc[:, :4].fill_(5)  # in place through a view
        model(**x)
        assert model._masks.mask is not third and not torch.equal(model._masks.mask.dense, third.dense)


def test_imm_forwards_share_one_mask(batch):
    """Through the objective: IMM's forward with gradient and its stop-gradient target forward run every layer
    with one mask object."""

    _, model, loss_fn, x0 = objective_setup(batch, text_weight=0.0)
    noise = loss_fn.draw(batch, torch.Generator().manual_seed(4))
    assert not all(noise.boundary), "the target forward runs"
    masks = []
    model.layers[0].register_forward_pre_hook(lambda mod, args: masks.append(args[3]))
    loss_fn(model, batch, x0, noise)
    assert len(masks) == 2 and masks[0] is masks[1]


def test_sampler_prefill_with_flex_equals_sdpa(tiny_assets):
    """The sampler's prefill runs FlexAttention when the model asks for it (padded to whole tiles), decode
    steps run SDPA over the cache; the generation equals the all-SDPA one."""
    kw = tiny_sizes(depth=2, width=64, image_size=16, max_seq_len=320)
    rows = {}
    for backend in ("sdpa", "flex"):
        text, image, model = tiny_model(tiny_assets, attention=backend, **kw)
        _randomize(model.eval(), seed=3)
        assert model.attention_backend() == backend and model.attention_backend(cached=True) == "sdpa"
        sampler = InterleavedSampler(model, text, image)
        opts = SamplingOptions(steps=2, guidance=1.5, max_new_tokens=6, max_images=1, image_first=True, seed=5)
        rows[backend] = sampler.run([["a large red circle"], ["a small blue square above a circle"]], opts)
    for a, b in zip(rows["sdpa"], rows["flex"]):
        assert a.tokens == b.tokens
        for sa, sb in zip(a.segments, b.segments):
            if isinstance(sa, str):
                assert sa == sb
            else:  # uint8 pixels: rounding may move a value by one
                assert abs(sa.astype(int) - sb.astype(int)).max() <= 1


def test_flex_training_on_cpu_is_refused(tiny_assets, tmp_path):
    from mmgen.train.loop import Trainer

    with pytest.raises(ConfigError, match="model.attention=flex: torch has no FlexAttention backward on a CPU"):
        Trainer(tiny_run(tiny_assets, tmp_path / "f", "model.attention=flex"))


def test_bf16_autocast_matches_fp32_with_fp32_master_weights(tiny_assets, tmp_path):
    """One training step on the same batch and weights with bf16 autocast and in fp32: the loss is finite and
    within 2 % of fp32 (bf16 keeps 8 mantissa bits: ~0.4 % per rounding, a few roundings deep), the gradient
    norm within 10 %, and the weights and optimizer state stay fp32 (the master copy the update is applied to)."""
    from accelerate.state import AcceleratorState

    from mmgen.train.loop import Trainer

    res = {}
    try:
        for precision in ("fp32", "bf16"):
            AcceleratorState._reset_state(True)  # accelerate keeps one precision per process
            tr = Trainer(tiny_run(tiny_assets, tmp_path / precision, f"train.precision={precision}"))
            res[precision] = tr.train_step(tr._micro_batches(iter(tr.data)))
            assert tr.engine.acc.mixed_precision == ("bf16" if precision == "bf16" else "no")
            assert all(p.dtype == torch.float32 for p in tr.engine.unwrapped.parameters())
            assert all(
                v.dtype == torch.float32
                for s in tr.engine.optimizer.state.values()
                for v in s.values()
                if torch.is_tensor(v) and v.is_floating_point() and v.ndim > 0
            )
    finally:
        AcceleratorState._reset_state(True)  # later tests build their own fp32 Accelerator
    fp32, bf16 = res["fp32"], res["bf16"]
    assert torch.isfinite(torch.tensor([bf16["loss"], bf16["grad_norm"]])).all() and not bf16["skipped"]
    assert bf16["loss"] != fp32["loss"], "autocast should change the arithmetic"
    assert abs(bf16["loss"] - fp32["loss"]) <= 0.02 * abs(fp32["loss"])
    assert abs(bf16["grad_norm"] - fp32["grad_norm"]) <= 0.10 * fp32["grad_norm"]


def test_bf16_parameters_under_autocast_match_fp32(batch):
    """DeepSpeed's bf16 mode stores every parameter in bf16 (fp32 masters live in its optimizer) and accelerate
    leaves autocast off there, so `Engine.autocast` opens torch.autocast itself. The model must then take fp32
    inputs (latents, times) into bf16 weights everywhere, the fp32 time embedding included: the forward runs
    and its outputs stay within bf16 rounding of the fp32 model's."""
    from mmgen.models.layers import TimeEmbedding

    cfg = tiny_config()
    torch.manual_seed(0)
    ref = MMGenModel(cfg).eval()
    _randomize(ref)
    half = MMGenModel(cfg).eval()
    half.load_state_dict(ref.state_dict())
    half.to(torch.bfloat16)
    x = _inputs(batch, cfg)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = half(**x)
    want = ref(**x)
    img = batch.kind != KIND_TEXT
    for a, b in ((got.logits, want.logits), (got.image[img], want.image[img])):
        assert torch.isfinite(a).all()
        assert (a.float() - b).norm() <= 0.03 * b.norm()
    emb = TimeEmbedding(32).to(torch.bfloat16)
    assert emb(torch.rand(5), torch.rand(5)).dtype == torch.float32  # fp32 out, whatever the weights' dtype


def _dynamo_counts():
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_compiled_blocks_no_graph_breaks_or_recompiles(text_tokenizer, attention):
    """Blocks compiled (graph capture only: backend aot_eager) over packed batches whose text/image split
    changes every time: no graph break ever, and after the first batches (one static graph, then one with
    dynamic sizes) no new graph. The same check on a GPU run: TORCH_LOGS=graph_breaks,recompiles."""
    torch._dynamo.reset()
    cfg = tiny_config(attention=attention)
    cfg.vocab_size = len(text_tokenizer)
    torch.manual_seed(0)
    model = MMGenModel(cfg)
    _randomize(model)
    model.compile_blocks(backend="aot_eager")
    eager = MMGenModel(cfg)
    eager.load_state_dict(model.state_dict())
    batches = [packed(text_tokenizer, rows=2, seq_len=96, start=s) for s in (0, 40, 80, 120)]
    assert len({int((b.kind != KIND_TEXT).sum()) for b in batches}) > 2, "the splits should differ"
    counts = []
    grad = contextlib.nullcontext() if attention == "sdpa" else torch.no_grad()  # no flex backward on a CPU
    for b in batches:
        x = _inputs(b, cfg, uncond_every=3)
        with grad:
            out = model(**x)
            if attention == "sdpa":
                (out.logits.pow(2).mean() + out.image.pow(2).mean()).backward()
        counts.append(_dynamo_counts())
    assert all(br == 0 for _, br in counts), f"graph breaks: {counts}"
    assert counts[-1][0] == counts[1][0], f"recompiled in the steady state: {counts}"
    seen = []
    eager.layers[0].register_forward_pre_hook(lambda mod, args: seen.append(args))
    with torch.no_grad():  # the captured graphs compute what eager does
        ref = eager(**x)
        torch.testing.assert_close(model(**x).image, ref.image, rtol=1e-5, atol=1e-6)
        # the same question asked of one block call directly: torch._dynamo.explain counts its graph breaks
        explained = torch._dynamo.explain(eager.layers[0])(*seen[0])
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


@pytest.mark.slow
def test_compiled_block_equals_eager_inductor(batch):
    """One MoT model with inductor-compiled blocks (the `train.compile` path): forward and gradients equal
    eager within float32 rounding (compiling takes ~45 s on a 2-core CPU, hence slow)."""
    compiled_equals_eager(tiny_config(), batch, torch.device("cpu"), {}, out_tol=(1e-4, 1e-5), grad_tol=(1e-3, 1e-6))
