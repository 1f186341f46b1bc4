"""The MoT backbone: parity with a dense transformer, masks, causality, save/load, pinned key names."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import _inputs, _randomize, tiny_config

from mmgen.data.plan import KIND_CLEAN, KIND_NOISY, KIND_TEXT
from mmgen.models.attention import AttentionMask, MaskPlan, dense_mask
from mmgen.models.model import MMGenModel
from mmgen.tokenizer.text import SPECIAL_IDS


def test_tied_mot_equals_dense(batch):
    cfg = tiny_config()
    mot = MMGenModel(cfg).eval()
    _randomize(mot)
    with torch.no_grad():
        for layer in mot.layers:
            layer.experts[1].load_state_dict(layer.experts[0].state_dict())
    dense = MMGenModel(tiny_config(experts="dense")).eval()
    state = {k: v for k, v in mot.state_dict().items() if ".experts.1." not in k}
    dense.load_state_dict(state, strict=True)
    x = _inputs(batch, cfg)
    a, d = mot(**x), dense(**x)
    img = batch.kind != KIND_TEXT
    torch.testing.assert_close(a.logits, d.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.image[img], d.image[img], rtol=1e-5, atol=1e-5)
    # and the experts really are separate weights when untied
    _randomize(mot, seed=2)
    assert not torch.allclose(mot(**x).logits, d.logits)


def _mask(b, uncond=None):
    return dense_mask(MaskPlan.of(replace(b, uncond=uncond)), b.shape[1])[:, 0]


def test_mask_properties(batch):
    m = _mask(batch)
    B, L = batch.doc.shape
    doc, kind, image = batch.doc, batch.kind, batch.image
    for r in range(B):
        for q in range(L):
            for k in range(L):
                ok = bool(m[r, q, k])
                if doc[r, q] < 0:  # padding sees only itself
                    assert ok == (q == k)
                    continue
                if doc[r, q] != doc[r, k]:
                    assert not ok, "attention crosses documents"
                    continue
                same_copy = image[r, q] >= 0 and image[r, q] == image[r, k] and kind[r, q] == kind[r, k]
                if kind[r, k] == KIND_NOISY:
                    assert ok == same_copy, "a noisy copy is seen by exactly its own tokens"
                elif same_copy:
                    assert ok, "an image copy is bidirectional"
                else:
                    assert ok == (k <= q), "causal otherwise (text, earlier clean images)"
    assert (m.sum(-1) > 0).all()


def test_unconditional_noisy_copy_sees_only_itself(batch):
    img = batch.kind != KIND_TEXT
    both = set(batch.image[batch.kind == KIND_NOISY].tolist()) & set(batch.image[batch.kind == KIND_CLEAN].tolist())
    target = max(both)  # an image with a noisy and a clean copy
    uncond = img & (batch.image == target)
    m = _mask(batch, uncond)
    q = (uncond & (batch.kind == KIND_NOISY)).nonzero()
    assert len(q) > 0
    for r, i in q.tolist():
        seen = m[r, i].nonzero().squeeze(1)
        assert (batch.image[r, seen] == batch.image[r, i]).all() and (batch.kind[r, seen] == KIND_NOISY).all()
    clean = (uncond & (batch.kind == KIND_CLEAN)).nonzero()
    r, i = clean[0].tolist()
    assert m[r, i, : i + 1].sum() > 4, "the clean copy of that image keeps its context"


def test_flex_block_mask_matches_dense(batch):
    """The FlexAttention path (eager on CPU; compiled on GPU) gives the attention of the dense mask."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    B, L = batch.doc.shape
    uncond = (batch.kind != KIND_TEXT) & (batch.image % 4 == 1)
    plan = MaskPlan.of(replace(batch, uncond=uncond))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, 2, L, 16, generator=g) for _ in range(3))
    dense = AttentionMask(plan, L, "sdpa")
    flex = AttentionMask(plan, L, "flex")
    torch.testing.assert_close(flex.attend(q, k, v), dense.attend(q, k, v), rtol=1e-4, atol=1e-5)
    # block structure: every block the dense mask touches is in the block mask
    dm = dense.dense[:, 0]
    blocks = flex.blocks.to_dense()[:, 0].bool()
    bs = flex.blocks.BLOCK_SIZE[0]
    nb = -(-L // bs)
    touched = torch.zeros(B, nb, nb, dtype=torch.bool)
    for i in range(nb):
        for j in range(nb):
            touched[:, i, j] = dm[:, i * bs : (i + 1) * bs, j * bs : (j + 1) * bs].any(-1).any(-1)
    assert torch.equal(blocks[:, :nb, :nb], touched)


def _randomized(batch):
    """(config, the randomized tiny model in eval mode, inputs of `batch`, its output on them)."""
    cfg = tiny_config()
    model = MMGenModel(cfg).eval()
    _randomize(model)
    x = _inputs(batch, cfg)
    return cfg, model, x, model(**x)


def test_later_tokens_never_change_earlier_text(batch):
    cfg, model, x, base = _randomized(batch)
    # perturb everything from position 100 on in row 0 (ids and image values)
    y = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in x.items()}
    y["input_ids"][0, 100:] = (y["input_ids"][0, 100:] + 7) % cfg.vocab_size
    y["image_tokens"][0, 100:] += 1.0
    out = model(**y)
    text = batch.kind == KIND_TEXT
    pos = text.nonzero()  # row-major order of the logits
    early = (pos[:, 0] != 0) | (pos[:, 1] < 100)
    torch.testing.assert_close(out.logits[early], base.logits[early])
    assert not torch.allclose(out.logits[~early], base.logits[~early])


def test_noisy_copies_influence_nothing_else(batch):
    cfg, model, x, base = _randomized(batch)
    noisy = batch.kind == KIND_NOISY
    y = dict(x)
    y["image_tokens"] = torch.where(noisy[..., None], x["image_tokens"] + 3.0, x["image_tokens"])
    y["t"] = torch.where(noisy, x["t"] * 0.5, x["t"])
    out = model(**y)
    torch.testing.assert_close(out.logits, base.logits)
    keep = ~noisy & (batch.kind != KIND_TEXT)
    torch.testing.assert_close(out.image[keep], base.image[keep])
    assert not torch.allclose(out.image[noisy], base.image[noisy])


def test_save_load_round_trip(batch, tmp_path):
    cfg = tiny_config()
    model = MMGenModel(cfg).eval()
    _randomize(model)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    again = MMGenModel.from_pretrained(tmp_path / "m").eval()
    x = _inputs(batch, cfg)
    a, b = model(**x), again(**x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.image, b.image)
    assert again.config.image_grid == cfg.image_grid and again.config.boi_token_id == SPECIAL_IDS["boi"]


PINNED_KEYS = sorted(
    [
        "embed.weight",
        "image_in.weight",
        "image_in.bias",
        "image_pos",
        "lm_head.weight",
        "image_out.weight",
        "image_out.bias",
        "text_norm.weight",
        "image_norm.weight",
        "image_final_mod.weight",
        "image_final_mod.bias",
        "time.t_mlp.0.weight",
        "time.t_mlp.0.bias",
        "time.t_mlp.2.weight",
        "time.t_mlp.2.bias",
        "time.s_mlp.0.weight",
        "time.s_mlp.0.bias",
        "time.s_mlp.2.weight",
        "time.s_mlp.2.bias",  # time_input s
        "layers.0.image_mod.weight",
        "layers.0.image_mod.bias",
    ]
    + [
        f"layers.0.experts.{e}.{n}"
        for e in (0, 1)
        for n in (
            "norm1.weight",
            "qkv.weight",
            "q_norm.weight",
            "k_norm.weight",
            "o.weight",
            "norm2.weight",
            "mlp.w13.weight",
            "mlp.w2.weight",
        )
    ]
)


def test_state_dict_keys_are_pinned():
    """Checkpoints in the wild depend on these names: change them only with a conversion. (A model with
    time_input=stride, as every release before the option, has `time.d_mlp` instead of `time.s_mlp`; one with
    image_pos_embed=false, as every release before that option, has no `image_pos`.)"""
    cfg = tiny_config()
    cfg.depth = 1
    assert sorted(MMGenModel(cfg).state_dict()) == PINNED_KEYS


def test_model_config_errors():
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(image_size=30)
    with pytest.raises(ValueError, match="pass image_tokens"):
        model = MMGenModel(tiny_config())
        z = torch.zeros(1, 4, dtype=torch.long)
        model(z, torch.tensor([[0, 1, 1, 0]]), z, z, torch.zeros(3, 1, 4, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stream_gathers_have_the_gradients_of_indexing(dtype):
    """The stream permutation and the per-(t, s) broadcast have hand-written backwards (an inverse gather; an
    fp32 sum of repeated rows): their gradients equal those of plain advanced indexing."""
    from mmgen.models.mot import _Broadcast, _Permute

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g).to(dtype).requires_grad_()
    perm = torch.randperm(7, generator=g)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(7)
    up = torch.randn(7, 5, generator=g).to(dtype)
    (gx_ref,) = torch.autograd.grad((x[perm] * up).sum(), x)
    (gx,) = torch.autograd.grad((_Permute.apply(x, perm, inv) * up).sum(), x)
    assert torch.equal(_Permute.apply(x, perm, inv), x[perm])
    assert torch.equal(gx, gx_ref)

    index = torch.randint(0, 7, (40,), generator=g)
    up = torch.randn(40, 5, generator=g).to(dtype)
    (gb_ref,) = torch.autograd.grad((x.float()[index] * up.float()).sum(), x)
    (gb,) = torch.autograd.grad((_Broadcast.apply(x, index) * up).sum(), x)
    assert gb.dtype == dtype
    torch.testing.assert_close(gb, gb_ref.to(dtype), rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=1e-5)
