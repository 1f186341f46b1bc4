"""Training on one process: exact resume, gradient accumulation, non-finite steps, checkpoints, config errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import metrics, tiny_run

from mmgen.config import ConfigError, RunConfig
from mmgen.errors import CheckpointError
from mmgen.train.checkpoint import find_checkpoint


def run(cfg: RunConfig, max_steps: int | None = None, resume: str = "auto"):
    from mmgen.train.loop import Trainer

    trainer = Trainer(cfg, resume=resume)
    trainer.train(max_steps=max_steps)
    return trainer


def test_resume_is_exact(tiny_assets, tmp_path):
    full = run(tiny_run(tiny_assets, tmp_path / "full"))
    part_cfg = tiny_run(tiny_assets, tmp_path / "part")
    run(part_cfg, max_steps=3)
    assert find_checkpoint(tmp_path / "part" / "checkpoints", "auto").name == "step-0000003"
    resumed = run(part_cfg)
    assert resumed.resumed_from is not None and resumed.step == 6 and resumed.config_changes == []
    a, b = metrics(tmp_path / "full"), metrics(tmp_path / "part")
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6), (x["step"], x["loss"], y["loss"])
        assert x["image_loss"] == pytest.approx(y["image_loss"], abs=1e-6)
    # the release weights are the EMA and load back
    from mmgen.models.model import MMGenModel

    rel = MMGenModel.from_pretrained(tmp_path / "part" / "release")
    ref = full.ema.shadow
    for p, e in zip(rel.parameters(), ref):
        torch.testing.assert_close(p.data, e, rtol=0, atol=1e-6)


@pytest.mark.parametrize("objective", ["fm", "imm"])
def test_accumulating_4_micro_batches_equals_one_4x_batch(tiny_assets, tmp_path, objective):
    """Greedy packing fills the same rows either way; losses are normalised by global counts, and noise is
    drawn per image (and per IMM group, here of one particle) so both runs draw the same numbers."""
    common = [f"objective.image={objective}", "objective.imm.particles=1", "train.steps=3"]
    big = run(tiny_run(tiny_assets, tmp_path / "big", "data.rows=8", "train.grad_accum=1", *common))
    acc = run(tiny_run(tiny_assets, tmp_path / "acc", "data.rows=2", "train.grad_accum=4", *common))
    for x, y in zip(metrics(tmp_path / "big"), metrics(tmp_path / "acc")):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
    # Adam divides by sqrt(v): where a gradient is ~0, summation-order noise (one sum of 8 rows vs four of 2)
    # moves the update by up to ~1e-3 of lr; atol 1e-5 is 1 % of one step's update (lr 1e-3)
    for p, q in zip(big.engine.unwrapped.parameters(), acc.engine.unwrapped.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_resuming_with_another_config_names_the_changes(tiny_assets, tmp_path):
    from mmgen.train.loop import Trainer

    run(tiny_run(tiny_assets, tmp_path / "r"), max_steps=3)
    longer = Trainer(tiny_run(tiny_assets, tmp_path / "r", "train.steps=8", "objective.imm.particles=2"))
    assert longer.step == 3
    assert longer.config_changes == ["objective.imm.particles: 4 -> 2", "train.steps: 6 -> 8"]
    kept = tmp_path / "r" / "config-until-step-0000003.yaml"
    assert (
        kept.is_file() and "steps: 6" in kept.read_text() and "steps: 8" in (tmp_path / "r" / "config.yaml").read_text()
    )


def test_a_run_from_before_an_architecture_option_resumes_with_its_legacy_value(tiny_assets, tmp_path):
    """model_config.json of a run started before `image_pos_embed` existed has no key: it had no embedding.
    Resuming with the option off works; with the new default on, the error names the option and the fix."""
    from mmgen.train.loop import Trainer

    run(tiny_run(tiny_assets, tmp_path / "r", "model.image_pos_embed=false"), max_steps=3)
    saved = tmp_path / "r" / "model_config.json"
    cfg = json.loads(saved.read_text())
    del cfg["image_pos_embed"]
    saved.write_text(json.dumps(cfg))
    assert Trainer(tiny_run(tiny_assets, tmp_path / "r", "model.image_pos_embed=false")).step == 3
    with pytest.raises(CheckpointError, match=r"differs in image_pos_embed.*model.image_pos_embed=false"):
        Trainer(tiny_run(tiny_assets, tmp_path / "r"))


def test_nonfinite_loss_skips_step_then_stops(tiny_assets, tmp_path, capsys):
    from mmgen.train.loop import NonFiniteLoss, Trainer

    trainer = Trainer(tiny_run(tiny_assets, tmp_path / "nan", "train.max_nonfinite=3", "train.steps=20"))
    poison = {2}  # steps whose loss becomes NaN

    class Poisoned:
        def __init__(self, real):
            self.real, self.sigma_d, self.draw = real, real.sigma_d, real.draw

        def __call__(self, *a, **k):
            loss, st = self.real(*a, **k)
            return (loss * float("nan"), st) if trainer.step in poison else (loss, st)

    trainer.loss_fn = Poisoned(trainer.loss_fn)
    trainer.train(max_steps=2)
    before = [p.detach().clone() for p in trainer.engine.unwrapped.parameters()]
    ema_before = [t.clone() for t in trainer.ema.shadow]
    trainer.train(max_steps=1)  # step index 2 is poisoned
    m = metrics(tmp_path / "nan")[-1]
    assert m["skipped"] == 1.0 and math.isnan(m["loss"])
    assert all(torch.equal(p, q) for p, q in zip(before, trainer.engine.unwrapped.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(ema_before, trainer.ema.shadow))
    assert "non-finite" in capsys.readouterr().out
    trainer.train(max_steps=1)
    assert metrics(tmp_path / "nan")[-1]["skipped"] == 0.0 and trainer.bad_in_a_row == 0
    poison.update(range(4, 100))
    with pytest.raises(NonFiniteLoss, match="3 consecutive failures.*train.lr"):
        trainer.train()


def test_interrupted_checkpoint_write_is_ignored(tiny_assets, tmp_path):
    cfg = tiny_run(tiny_assets, tmp_path / "r", "train.ckpt_every=2")
    run(cfg, max_steps=4)
    root = tmp_path / "r" / "checkpoints"
    (root / "step-0000006.tmp").mkdir()  # a crash while writing step 6
    assert find_checkpoint(root, "auto").name == "step-0000004"
    (root / "latest").unlink()  # even without the pointer
    assert find_checkpoint(root, "auto").name == "step-0000004"
    with pytest.raises(CheckpointError, match="step-0000006.tmp: cannot resume from this folder: an unfinished write"):
        find_checkpoint(root, str(root / "step-0000006.tmp"))


def test_checkpoint_of_another_model_is_refused(tiny_assets, tmp_path):
    run(tiny_run(tiny_assets, tmp_path / "m"), max_steps=1)
    with pytest.raises(ValueError, match="another model.*depth"):
        run(tiny_run(tiny_assets, tmp_path / "m", "model.depth=3"))


def test_config_that_cannot_work_fails_before_training(tiny_assets, tmp_path):
    from mmgen.train.loop import Trainer

    with pytest.raises(ConfigError, match=r"data.seq_len=12 is too short.*data.seq_len >= "):
        Trainer(tiny_run(tiny_assets, tmp_path / "a", "data.seq_len=12"))
    with pytest.raises(ConfigError, match="text_tokenizer: no tokenizer recipe or folder at 'nowhere/tok'"):
        Trainer(tiny_run(tiny_assets, tmp_path / "b", "text_tokenizer=nowhere/tok"))
    with pytest.raises(ConfigError, match="divisible"):
        Trainer(tiny_run(tiny_assets, tmp_path / "c", "data.image_size=18"))


def test_live_tensor_memory_counts_each_storage_once():
    """The per-rank memory metric that shows ZeRO's sharding on a CPU: a new 8 MB tensor adds 8 MB, a view of
    it adds nothing, and freeing it gives the memory back."""
    from mmgen.train.log import live_tensor_mb

    cpu = torch.device("cpu")
    before = live_tensor_mb(cpu)
    x = torch.ones(2 * 2**20)  # 8 MB of float32
    views = [x[: 2**20], x.view(2, -1)]
    assert live_tensor_mb(cpu) - before == pytest.approx(8.0, abs=0.5)
    del x, views
    assert live_tensor_mb(cpu) - before == pytest.approx(0.0, abs=0.5)
