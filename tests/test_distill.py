"""objective.distill: the teacher's guided sampler, the 1-step jump's regression in the trainer, bad teachers."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_release
from helpers import metrics, objective_setup, tiny_run

from mmgen.config import ConfigError
from mmgen.config.schema import DistillConfig
from mmgen.data.plan import KIND_TEXT
from mmgen.train.distill import JumpDistillation


def _endpoints(batch, model, loss_fn, x0, guidance: float, steps: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(the teacher's endpoints, which targets had their condition dropped) from fixed draws."""
    cfg = DistillConfig(teacher="-", steps=steps, guidance=guidance)
    d = JumpDistillation(cfg, loss_fn, model, t_range=(0.0, 0.994))  # the IMM default range
    noise = d.draw(batch, torch.Generator().manual_seed(3), 0)
    return d.teacher_endpoints(batch, loss_fn._prepare(batch, x0, noise)), noise.uncond


def test_teacher_guidance_is_cfg_on_g_and_its_unconditional_branch_ignores_the_caption(batch):
    _, model, loss_fn, x0 = objective_setup(batch, imm={"cond_dropout": 0.4})
    e0, dropped = _endpoints(batch, model, loss_fn, x0, 0.0)
    e1, _ = _endpoints(batch, model, loss_fn, x0, 1.0)
    e3, _ = _endpoints(batch, model, loss_fn, x0, 3.0)
    assert dropped.any() and (~dropped).any()
    # one step of f(x, t, s) = a x + b G is affine in G, so guidance w moves the endpoint along e1 - e0
    torch.testing.assert_close(e3, e0 + 3.0 * (e1 - e0), rtol=1e-4, atol=1e-5)
    # a target whose condition is dropped gets the unconditional endpoint at every guidance
    torch.testing.assert_close(e3[dropped], e0[dropped], rtol=0, atol=1e-6)
    assert (e1[~dropped] - e0[~dropped]).abs().amax() > 1e-3  # and the others do depend on the condition
    # the unconditional branch does not read the captions; the conditional one does
    text = batch.kind == KIND_TEXT
    other = replace(batch, input_ids=torch.where(text, (batch.input_ids + 7) % 300, batch.input_ids))
    e0_other, _ = _endpoints(other, model, loss_fn, x0, 0.0)
    e1_other, _ = _endpoints(other, model, loss_fn, x0, 1.0)
    torch.testing.assert_close(e0_other, e0, rtol=0, atol=1e-6)
    assert (e1_other[~dropped] - e1[~dropped]).abs().amax() > 1e-4


def test_the_term_joins_the_loss_and_self_distillation_in_one_step_starts_at_zero(tiny_assets, tmp_path):
    """From one start: without the term, with weight 0 (off: the same run), and distilling the start itself. With
    one teacher step and no guidance the teacher's sample is the student's own jump, so the first step's term is
    0; with two steps it is not, and the logged loss is the run's without the term plus the term."""
    from mmgen.train.loop import Trainer

    Trainer(tiny_run(tiny_assets, tmp_path / "start", "train.steps=2")).train()
    release = tmp_path / "start" / "release"
    rows = {}
    for name, extra in {
        "none": [],
        "weight0": [f"objective.distill.teacher={release}", "objective.distill.weight=0"],
        "steps1": [f"objective.distill.teacher={release}", "objective.distill.steps=1"],
        "steps2": [f"objective.distill.teacher={release}", "objective.distill.steps=2"],
    }.items():
        cfg = tiny_run(tiny_assets, tmp_path / name, "train.steps=2", f"train.init_from={release}", *extra)
        Trainer(cfg).train()
        rows[name] = metrics(tmp_path / name)
    assert [r["loss"] for r in rows["weight0"]] == [r["loss"] for r in rows["none"]]
    assert "distill_loss" not in rows["weight0"][0]
    assert rows["steps1"][0]["distill_loss"] < 1e-12
    first, base = rows["steps2"][0], rows["none"][0]
    assert first["distill_loss"] > 1e-8
    assert first["loss"] == pytest.approx(base["loss"] + first["distill_loss"], rel=1e-6)
    assert first["image_loss"] == pytest.approx(base["image_loss"], rel=1e-6)  # the image objective's draws kept


@pytest.mark.parametrize("loss", ["l2", "pseudo_huber"])
@pytest.mark.parametrize("space", ["latent", "pixel"])
def test_each_images_error_is_l2_pseudo_huber_or_measured_in_pixels(batch, loss, space):
    """A 1-step unguided teacher that is the student draws the student's own jump; shifted by k_i per image, each
    image's mean squared error m is known (k^2; through a decoder x -> 2x, 4 k^2), and the term is the sum of m
    (l2) or of sqrt(m + c^2) - c (pseudo-Huber)."""
    _, model, loss_fn, x0 = objective_setup(batch)
    cfg = DistillConfig(teacher="-", steps=1, loss=loss, space=space, huber_c=0.05)
    d = JumpDistillation(cfg, loss_fn, copy.deepcopy(model), t_range=(0.0, 0.994), pixels=lambda x: 2 * x)
    noise = d.draw(batch, torch.Generator().manual_seed(3), 0)
    n = loss_fn._prepare(batch, x0, noise).targets.numel()
    k = torch.linspace(0.1, 0.5, n)
    own = d.teacher_endpoints
    d.teacher_endpoints = lambda b, prep: own(b, prep) + k.view(-1, 1, 1, 1)
    term = d(model, batch, x0, noise)
    m = k**2 * (4 if space == "pixel" else 1)
    expected = (m + 0.05**2).sqrt() - 0.05 if loss == "pseudo_huber" else m
    assert n >= 2 and float(term.detach()) == pytest.approx(float(expected.sum()), rel=1e-4)
    term.backward()
    assert sum(p.grad.abs().sum() for p in model.parameters() if p.grad is not None) > 0  # the student learns


def test_bad_distillation_options_are_refused_by_name(batch):
    from mmgen.config import RunConfig, load_config

    _, model, loss_fn, _ = objective_setup(batch)
    with pytest.raises(ValueError, match="space=pixel needs the image decoder"):
        JumpDistillation(DistillConfig(teacher="-", space="pixel"), loss_fn, model, t_range=(0.0, 0.994))
    for override, message in [
        ("objective.distill.huber_c=0", r"objective.distill.huber_c.*> 0"),
        ("objective.distill.loss=l1", r"objective.distill.loss.*'l2', 'pseudo_huber'"),
        ("objective.distill.space=rgb", r"objective.distill.space.*'latent', 'pixel'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(RunConfig, None, [override])


def test_pixel_space_distillation_decodes_as_the_sampler_does(tiny_assets, tmp_path):
    """objective.distill.space=pixel trains through the run's frozen image decoder, on the pixels the interleaved
    sampler shows for the same latents (its decode_pixels, with the latents' own mean and std)."""
    from mmgen.sampling.interleaved import InterleavedSampler
    from mmgen.train.loop import Trainer

    Trainer(tiny_run(tiny_assets, tmp_path / "start", "train.steps=1")).train()
    release = tmp_path / "start" / "release"
    run = [f"train.init_from={release}", f"objective.distill.teacher={release}", "objective.distill.steps=2"]
    cfg = tiny_run(tiny_assets, tmp_path / "px", "train.steps=2", *run, "objective.distill.space=pixel")
    trainer = Trainer(cfg)
    vae, c = trainer.image_tok, trainer.mconf
    with torch.no_grad():  # latent statistics that are not (0, 1), so a missing or swapped denormalize shows
        vae.latent_mean.copy_(torch.linspace(-0.3, 0.3, c.latent_channels))
        vae.latent_std.copy_(torch.linspace(0.5, 2.0, c.latent_channels))
    x = torch.randn(3, c.latent_channels, *(n * c.patch_size for n in c.image_grid)) * trainer.loss_fn.sigma_d
    shown = InterleavedSampler(trainer.engine.unwrapped, trainer.text_tok, vae).decode_pixels(x)
    ours = ((trainer.distill.pixels(x).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert np.array_equal(ours.numpy(), shown)
    assert not any(p.requires_grad for p in vae.parameters())  # the decoder is frozen
    trainer.train()
    assert metrics(tmp_path / "px")[0]["distill_loss"] > 1e-8


def test_bad_teachers_are_refused_with_the_fix(tiny_assets, tmp_path):
    from mmgen.train.loop import Trainer

    other = tiny_release(tiny_assets, tmp_path / "other")  # 32-px images: a 4x4 latent grid, the run's is 2x2
    with pytest.raises(
        ConfigError,
        match=r"image_grid \(4, 4\) \(this run: \(2, 2\)\).*this run's tokenizers, image size and time range",
    ):
        Trainer(tiny_run(tiny_assets, tmp_path / "a", f"objective.distill.teacher={other}"))
    from mmgen.tokenizer.image import load_image_tokenizer

    image = load_image_tokenizer(other / "image_tokenizer")
    with torch.no_grad():
        next(image.parameters()).add_(0.01)
    image.save_pretrained(other / "image_tokenizer")
    with pytest.raises(ConfigError, match="another image tokenizer"):
        Trainer(tiny_run(tiny_assets, tmp_path / "i", "data.image_size=32", f"objective.distill.teacher={other}"))
    with pytest.raises(ConfigError, match="set objective.image=imm"):
        Trainer(tiny_run(tiny_assets, tmp_path / "b", "objective.image=fm", f"objective.distill.teacher={other}"))
    with pytest.raises(Exception, match="objective.distill.teacher: no mmgen release at"):
        Trainer(tiny_run(tiny_assets, tmp_path / "c", f"objective.distill.teacher={tmp_path / 'missing'}"))
    # a shorter context than the run packs, and a flow-matching teacher whose times stop short of the run's T
    Trainer(tiny_run(tiny_assets, tmp_path / "short", "train.steps=1", "data.seq_len=64")).train()
    with pytest.raises(ConfigError, match=r"context 64 tokens \(this run packs 96\)"):
        Trainer(tiny_run(tiny_assets, tmp_path / "d", f"objective.distill.teacher={tmp_path / 'short' / 'release'}"))
    fm = ["objective.image=fm", "objective.fm.t_max=0.9", "train.steps=1"]
    Trainer(tiny_run(tiny_assets, tmp_path / "fm", *fm)).train()
    with pytest.raises(ConfigError, match=r"time range \[0.0, 0.9\] \(this run samples \[0.0, 0.994\]\)"):
        Trainer(tiny_run(tiny_assets, tmp_path / "e", f"objective.distill.teacher={tmp_path / 'fm' / 'release'}"))


@pytest.mark.parametrize("objective, grid", [("imm", "uniform"), ("fm", "cosine")])
def test_teacher_endpoints_are_the_samplers_image_from_the_same_noise(tiny_assets, objective, grid, monkeypatch):
    """The teacher's sample inside a packed training batch is what the interleaved sampler draws for the same
    caption from the same noise: the same time grid, sampler (pushforward for a flow map, Euler for flow matching),
    guidance and attention to the caption, though one runs on a packed batch and the other on a KV cache."""
    import numpy as np
    from conftest import TINY, tiny_model
    from helpers import _randomize

    import mmgen.sampling.interleaved as interleaved
    from mmgen.config import ObjectiveConfig, from_dict
    from mmgen.data.documents import Document, Image
    from mmgen.data.packing import Packer, PackSpec
    from mmgen.data.shards import Item
    from mmgen.objectives.multimodal import MultimodalLoss

    text, image, model = tiny_model(tiny_assets, **TINY, image_objective=objective)
    _randomize(model)
    model.eval()
    c, caption, steps, guidance = model.config, "a large red circle above a small blue square", 3, 2.5
    seen = {}

    def spy(g, noise, times, *args):  # the sampler's noise and image
        seen["noise"], seen["image"] = noise, real(g, noise, times, *args)
        return seen["image"]

    real = interleaved.sample
    monkeypatch.setattr(interleaved, "sample", spy)
    opts = interleaved.SamplingOptions(
        steps=steps,
        guidance=guidance,
        time_grid=grid,
        image_first=True,
        stop_after_image=True,
        max_new_tokens=0,
        seed=4,
    )
    interleaved.InterleavedSampler(model, text, image).run([[caption]], opts)

    doc = Document("d", [caption, Image(pixels=np.zeros((c.image_size, c.image_size, 3), np.uint8))])
    batch = next(Packer(text, PackSpec.from_config(c, rows=1)).batches([Item(doc, 0, 0, 0)], keep_last=True))
    loss_fn = MultimodalLoss(
        from_dict(ObjectiveConfig, {"image": objective}), c.patch_size, c.image_grid, c.latent_channels
    )
    cfg = DistillConfig(teacher="-", steps=steps, guidance=guidance, time_grid=grid)
    d = JumpDistillation(cfg, loss_fn, model, (c.t_min, c.t_max))
    noise = d.draw(batch, torch.Generator().manual_seed(0), 0)
    noise.uncond[:] = False
    x0 = torch.randn(1, c.latent_channels, *(n * c.patch_size for n in c.image_grid))  # unseen by the noisy copy
    prep = replace(loss_fn._prepare(batch, x0, noise), eps=seen["noise"])
    torch.testing.assert_close(d.teacher_endpoints(batch, prep), seen["image"], rtol=1e-4, atol=1e-5)


def test_a_resumed_distillation_refuses_a_teacher_that_changed_on_disk(tiny_assets, tmp_path):
    from safetensors.torch import load_file, save_file

    from mmgen.errors import CheckpointError
    from mmgen.train.loop import Trainer

    Trainer(tiny_run(tiny_assets, tmp_path / "start", "train.steps=1")).train()
    teacher = tmp_path / "start" / "release"
    run = [f"train.init_from={teacher}", f"objective.distill.teacher={teacher}", "train.ckpt_every=1"]
    Trainer(tiny_run(tiny_assets, tmp_path / "d", "train.steps=1", *run)).train()
    Trainer(tiny_run(tiny_assets, tmp_path / "d", "train.steps=2", *run)).train()  # the same teacher: resumes
    assert metrics(tmp_path / "d")[-1]["step"] == 2
    weights = load_file(str(teacher / "model.safetensors"))  # the teacher's stage rerun: other weights
    save_file({k: v + 0.01 for k, v in weights.items()}, str(teacher / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"trained against another teacher.*restore that release"):
        Trainer(tiny_run(tiny_assets, tmp_path / "d", "train.steps=3", *run))
