"""The packed-batch objective: group formation, text loss, boundary groups, batches without text or images."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from helpers import objective_setup

from mmgen.data.plan import IGNORE, KIND_NOISY
from mmgen.objectives.groups import condition_keys, imm_groups, prompt_groups
from mmgen.objectives.multimodal import count_units


def test_group_sizes():
    assert imm_groups(0, 4) == [] and imm_groups(3, 4) == [3] and imm_groups(8, 4) == [4, 4]
    assert imm_groups(11, 4) == [6, 5] and imm_groups(7, 4) == [7]  # the remainder joins the groups
    for n in range(1, 40):
        sizes = imm_groups(n, 4)
        assert (
            sum(sizes) == n and (n < 4 or min(sizes) >= 4) and max(sizes) <= max(4, n) and max(sizes) - min(sizes) <= 1
        )


def test_text_loss_is_the_cross_entropy_of_the_labels(batch):
    cfg, model, loss_fn, x0 = objective_setup(batch, image_weight=0.0)
    seen = []

    def spy(**kw):
        out = model(**kw)
        seen.append((kw["text_positions"], out.logits))
        return out

    loss, st = loss_fn(spy, batch, x0, loss_fn.draw(batch, torch.Generator().manual_seed(1)))
    where, logits = seen[0]
    assert torch.equal(where, batch.labels != IGNORE)  # logits only where there is a target
    ref = F.cross_entropy(logits, batch.labels[where])
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert st["text_tokens"] == where.sum()


def test_boundary_groups_are_flow_matching(batch):
    """With every group on the boundary (s = t) the image loss is flow matching's. One group holds every
    target, so its mean equals flow matching's mean over images."""
    n_targets = int(batch.image_loss.sum())
    assert n_targets >= 2
    _, model, imm_fn, x0 = objective_setup(
        batch, text_weight=0.0, imm={"boundary_fraction": 1.0, "particles": n_targets}
    )
    noise = imm_fn.draw(batch, torch.Generator().manual_seed(2))
    assert all(noise.boundary) and torch.equal(noise.s, noise.t) and noise.sizes == [n_targets]
    loss, st = imm_fn(model, batch, x0, noise)
    # reference: the flow-matching objective with the same t and eps
    _, _, fm_fn, _ = objective_setup(batch, text_weight=0.0, image="fm")
    fm_noise = fm_fn.draw(batch, torch.Generator().manual_seed(9))
    fm_noise.t, fm_noise.s, fm_noise.r, fm_noise.eps, fm_noise.uncond = (
        noise.t,
        noise.t,
        noise.t,
        noise.eps,
        noise.uncond,
    )
    fm_loss, fm_st = fm_fn(model, batch, x0, fm_noise)
    assert st["image_units"] == 1
    assert st["image_loss"] == pytest.approx(fm_st["image_loss"], rel=1e-5)
    torch.testing.assert_close(loss, fm_loss, rtol=1e-5, atol=1e-7)


def test_no_text_targets_and_no_images_stay_finite(batch):
    cfg, model, loss_fn, x0 = objective_setup(batch)
    b = replace(batch, labels=torch.full_like(batch.labels, IGNORE))
    loss, st = loss_fn(model, b, x0, loss_fn.draw(b, torch.Generator().manual_seed(3)))
    assert torch.isfinite(loss) and st["text_tokens"] == 0
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    kind = torch.where(batch.kind == KIND_NOISY, torch.ones_like(batch.kind), batch.kind)
    b = replace(batch, image_loss=torch.zeros_like(batch.image_loss), kind=kind)
    noise = loss_fn.draw(b, torch.Generator().manual_seed(3))
    loss, st = loss_fn(model, b, x0, noise)
    assert torch.isfinite(loss) and st["image_units"] == 0 and count_units(b, noise, cfg)[1] == 0


def test_target_branch_carries_no_gradient(batch):
    """theta- is the same weights without gradient: the loss's gradient equals that of a copy where the
    y_r forward runs on a frozen duplicate of the model."""
    import copy

    cfg, model, loss_fn, x0 = objective_setup(batch, text_weight=0.0)
    noise = loss_fn.draw(batch, torch.Generator().manual_seed(4))
    loss, _ = loss_fn(model, batch, x0, noise)
    loss.backward()
    g1 = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    frozen = copy.deepcopy(model).requires_grad_(False)
    model.zero_grad()
    calls = {"n": 0}

    def first_live_then_frozen(**kw):
        calls["n"] += 1
        return model(**kw) if calls["n"] == 1 else frozen(**kw)

    loss2, _ = loss_fn(first_live_then_frozen, batch, x0, noise)
    loss2.backward()
    g2 = [p.grad for p in model.parameters() if p.grad is not None]
    torch.testing.assert_close(loss, loss2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------ grouping by prompt (imm.group_by)
@pytest.fixture(scope="module")
def class_batch(text_tokenizer):
    """CIFAR-style documents: "caption <image>" (a target) or "<image> caption" (a target without text before
    it, or context only), three captions, plus two-image documents whose second image sees the first."""
    import numpy as np

    from mmgen.data.documents import Document, Image
    from mmgen.data.packing import Packer, PackSpec
    from mmgen.data.shards import Item
    from mmgen.models.model import MMGenConfig

    packer = Packer(
        text_tokenizer, PackSpec.from_config(MMGenConfig(image_grid=(2, 2), image_size=16), rows=4, seq_len=96)
    )
    captions = ["a red circle", "a blue square", "a green triangle"]
    rng = np.random.default_rng(0)
    items = []
    for i in range(200):
        cap = captions[int(rng.integers(3))]
        img = Image(pixels=rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
        if i % 7 == 6:
            segs = [cap, Image(pixels=img.pixels.copy()), "the same", img]
        elif i % 3 == 2:
            img.loss = i % 2 == 0
            segs = [img, cap]
        else:
            segs = [cap, img]
        items.append(Item(Document(f"d{i}", segs, {"caption": cap}), 0, 0, i))
    return next(packer.batches(items)), text_tokenizer


def test_condition_keys_are_the_text_before_each_target(class_batch):
    from mmgen.tokenizer.text import SpecialIds

    batch, tok = class_batch
    ids = SpecialIds.of(tok)
    keys = condition_keys(batch)
    targets = batch.image_loss.nonzero().squeeze(1).tolist()
    assert len(keys) == len(targets) >= 12
    alone = [k for k in keys if k[0] == "image context"]
    assert alone and all(k[1] in targets for k in alone)  # the second image of a two-image document
    captions = set()
    for key in keys:
        if key[0] != "image context":  # <s> caption <boi>, exactly as the tokenizer writes the caption
            assert (
                key[0] == ids.bos
                and key[-1] == ids.boi
                and list(key[1:-1]) == tok.encode(tok.decode(list(key[1:-1])).strip(), add_special_tokens=False)
            )
            captions.add(tok.decode(list(key[1:-1])).strip())
    # "" is an image that opens its document: it sees only <s> <boi>
    assert captions == {"", "a red circle", "a blue square", "a green triangle"} and (ids.bos, ids.boi) in keys


def test_prompt_groups_pinned():
    keys = [("a",), ("b",), ("a",), ("a",), ("b",), ("c",), ("a",)]
    # a: 0 2 3 6 -> two groups of 2; b: 1 4 -> one group; c alone is pooled into a smaller group
    assert prompt_groups(keys, 2) == ([0, 2, 3, 6, 1, 4, 5], [2, 2, 2, 1])
    assert prompt_groups(keys, 4) == ([0, 2, 3, 6, 1, 4, 5], [4, 3])  # b and c are pooled
    assert prompt_groups([], 4) == ([], [])


def test_prompt_groups_hold_one_condition_and_dropped_targets_apart(class_batch):
    """Dropout is decided per target before grouping: a group holds targets of one prompt, all kept, or
    targets whose condition was dropped (whatever their prompt); mixed groups only come from the final pool."""
    batch, _ = class_batch
    _, model, loss_fn, x0 = objective_setup(batch, imm={"group_by": "prompt", "particles": 3, "cond_dropout": 0.3})
    keys = condition_keys(batch)
    noise = loss_fn.draw(batch, torch.Generator().manual_seed(5))
    order = noise.order.tolist()
    assert sorted(order) == list(range(len(keys)))
    dropped = noise.uncond[torch.argsort(noise.order)]  # per target
    assert 0 < int(dropped.sum()) < len(keys)
    kinds, dropped_prompts, a = [], set(), 0
    for size in noise.sizes:
        sl = slice(a, a + size)
        members = order[sl]
        assert len(set(noise.t[sl].tolist())) == 1
        if all(dropped[j] for j in members):
            kinds.append("dropped")
            dropped_prompts |= {keys[j] for j in members}
        elif not any(dropped[j] for j in members) and len({keys[j] for j in members}) == 1:
            kinds.append("one prompt")
        else:
            kinds.append("pool")
        a += size
    assert "dropped" in kinds and kinds.count("one prompt") >= 2
    first_pool = kinds.index("pool") if "pool" in kinds else len(kinds)
    assert set(kinds[first_pool:]) <= {"pool"}  # the pool comes last
    assert len(dropped_prompts) >= 2  # dropped targets of several prompts share groups: draws from the marginal
    loss, _ = loss_fn(model, batch, x0, noise)
    assert torch.isfinite(loss)


def test_slot_order_reaches_every_target_input(class_batch):
    """With one particle per group, grouping by prompt only reorders the targets: the loss equals the one of
    position grouping given the same draws per target."""
    batch, _ = class_batch
    _, model, by_prompt, x0 = objective_setup(batch, text_weight=0.0, imm={"group_by": "prompt", "particles": 1})
    _, _, by_position, _ = objective_setup(batch, text_weight=0.0, imm={"particles": 1})
    noise = by_prompt.draw(batch, torch.Generator().manual_seed(6))
    assert noise.order.tolist() != sorted(noise.order.tolist())  # a real permutation
    ref = by_position.draw(batch, torch.Generator().manual_seed(7))
    back = torch.argsort(noise.order)  # target i sits in slot back[i]
    for f in ("t", "s", "r", "uncond", "eps"):
        setattr(ref, f, getattr(noise, f)[back])
    ref.boundary = [noise.boundary[j] for j in back.tolist()]
    torch.testing.assert_close(
        by_prompt(model, batch, x0, noise)[0], by_position(model, batch, x0, ref)[0], rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("repeat", [1, 4])
def test_shapes_repeat_gives_groups_of_one_caption(text_tokenizer, repeat):
    """With data.shapes.repeat = M the M copies of a caption share a micro-batch, so grouping by prompt forms
    groups of one caption; with repeat 1 nearly every caption is unique in its batch and lands in the pool."""
    from mmgen.config import ShapesConfig
    from mmgen.data.loader import ShapesStream
    from mmgen.data.packing import Packer, PackSpec
    from mmgen.data.shards import Split
    from mmgen.models.model import MMGenConfig

    spec = PackSpec.from_config(MMGenConfig(image_grid=(2, 2), image_size=16), rows=8, seq_len=128)
    cfg = ShapesConfig(image_size=16, repeat=repeat, p_image_caption=0, p_interleaved=0)
    batch = next(Packer(text_tokenizer, spec).batches(ShapesStream(cfg, Split()).items(0)))
    keys = condition_keys(batch)
    order, sizes = prompt_groups(keys, 4)
    pure, a = 0, 0
    for size in sizes:
        pure += size * (len({keys[j] for j in order[a : a + size]}) == 1)
        a += size
    assert len(keys) >= 16
    if repeat == 4:
        assert len(keys) - pure <= 3  # at most the batch's last caption is cut short and pooled
    else:
        assert pure <= len(keys) // 2


def test_x_r_model_feeds_the_target_branch_the_networks_own_jump(batch):
    """imm.x_r = model: a second no-gradient forward at the noisy inputs with second time r gives the jump
    x_r = f(x_t, t, r); the target forward then reads c_in(r) x_r at time r instead of the DDIM step."""
    from mmgen.flowmap import ddim, flow_map, network_input
    from mmgen.models.patches import patchify

    cfg, model, loss_fn, x0 = objective_setup(batch, text_weight=0.0, imm={"x_r": "model"})
    noise = loss_fn.draw(batch, torch.Generator().manual_seed(4))
    calls = []

    def recorded(**kw):
        calls.append(kw)
        return model(**kw)

    loss_fn(recorded, batch, x0, noise)
    assert len(calls) == 3
    first, jump, target = calls
    noisy = batch.kind == KIND_NOISY
    assert torch.equal(jump["image_tokens"], first["image_tokens"]) and torch.equal(jump["t"], first["t"])
    assert set(first["s"][noisy].tolist()) == set(noise.s.tolist())
    assert set(jump["s"][noisy].tolist()) == set(noise.r.tolist()) == set(target["t"][noisy].tolist())

    prep = loss_fn._prepare(batch, x0, noise)
    with torch.no_grad():
        g_jump = loss_fn._g(model(**jump).image, batch, prep)
    sd = loss_fn.sigma_d

    def target_tokens(x_r):
        noisy_r = torch.zeros_like(prep.noisy)
        noisy_r[prep.targets] = patchify(network_input(x_r, noise.r, sd), loss_fn.p)
        return loss_fn._inputs(batch, prep, noisy_r, prep.t)["image_tokens"]

    own = target_tokens(flow_map(prep.x_t, noise.t, noise.r, g_jump, sd))
    torch.testing.assert_close(target["image_tokens"], own)
    assert not torch.allclose(target["image_tokens"], target_tokens(ddim(prep.x_t, prep.x, noise.t, noise.r)))
