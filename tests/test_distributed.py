"""Two CPU processes (gloo) through `accelerate launch`: DDP, ZeRO-2 and ZeRO-3 against a single-process
reference that computes the same global batch (both ranks' micro-batches) with plain torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO
from helpers import launch, metrics, tiny_run

from mmgen.config import dump_config
from mmgen.models.model import MMGenModel
from mmgen.objectives.multimodal import LossNorm, MultimodalLoss, count_units
from mmgen.train import build
from mmgen.train.ema import EMA
from mmgen.train.loop import make_optimizer
from mmgen.train.schedule import learning_rate

pytestmark = pytest.mark.distributed
STEPS = 5


def reference(cfg, world: int = 2):
    """Plain torch on one process: per step, each emulated rank's micro-batches, generators seeded as the
    trainer seeds them per rank, losses normalised by the global counts; AdamW; EMA."""
    torch.manual_seed(cfg.train.seed)
    text, image = build.load_tokenizers(cfg)
    mc = build.model_config(cfg, text, image)
    spec = build.pack_spec(cfg, mc)
    model = MMGenModel(mc)
    opt = make_optimizer(model, cfg.train)
    ema = EMA([p.data for p in model.parameters()], cfg.train.ema_decay)
    loss_fn = MultimodalLoss(cfg.objective, mc.patch_size, mc.image_grid, mc.latent_channels)
    distill = build.distillation(cfg, loss_fn, mc, (text, image), torch.device("cpu"))  # objective.distill
    pipes = [iter(build.data_pipe(cfg, spec, text, r, world)) for r in range(world)]
    losses = []
    for step in range(cfg.train.steps):
        micro = [[next(p) for _ in range(cfg.train.grad_accum)] for p in pipes]
        noises, jumps = [], []
        for r, mbs in enumerate(micro):
            gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step * 7919 + r)
            noises.append([loss_fn.draw(b, gen, step) for b in mbs])
            jumps.append([distill.draw(b, gen, step) if distill else None for b in mbs])
        pairs = [(b, n) for mbs, ns in zip(micro, noises) for b, n in zip(mbs, ns)]
        counts = [sum(count_units(b, n, cfg.objective)[i] for b, n in pairs) for i in (0, 1)]
        norm = LossNorm(*counts)
        targets = sum(len(n.t) for _, n in pairs)
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, cfg.train)
        total = 0.0
        for mbs, ns, js in zip(micro, noises, jumps):
            for b, noise, jump in zip(mbs, ns, js):
                x0 = build.clean_latents(b, image, loss_fn.sigma_d, torch.device("cpu"))
                loss, _ = loss_fn(model, b, x0, noise, norm)
                if jump is not None:
                    loss = loss + cfg.objective.distill.weight * distill(model, b, x0, jump) / targets
                loss.backward()
                total += float(loss.detach())
        opt.step()
        opt.zero_grad()
        ema.update([p.data for p in model.parameters()])
        losses.append(total)
    return losses, model, ema


@pytest.fixture(scope="module")
def setup(tiny_assets, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    cfg = tiny_run(tiny_assets, tmp / "unused", f"train.steps={STEPS}")
    ref_losses, ref_model, ref_ema = reference(cfg)
    return tiny_assets, tmp, ref_losses, ref_ema


def _config(setup, name: str, *overrides: str) -> tuple[Path, Path]:
    assets, tmp, _, _ = setup
    out = tmp / name
    cfg = tiny_run(assets, out, f"train.steps={STEPS}", *overrides)
    return dump_config(cfg, tmp / f"{name}.yaml"), out


def _check_losses(setup, out: Path, tol: float = 2e-5) -> list[dict]:
    got = metrics(out)
    assert [m["step"] for m in got] == list(range(1, STEPS + 1))
    for m, want in zip(got, setup[2]):
        assert m["loss"] == pytest.approx(want, abs=tol), (m["step"], m["loss"], want)
    return got


def test_ddp_two_processes_match_single_process(setup):
    cfg_path, out = _config(setup, "ddp")
    launch("configs/accelerate/ddp_cpu.yaml", cfg_path)
    _check_losses(setup, out)


def test_zero2_two_processes_match_single_process(setup):
    cfg_path, out = _config(setup, "zero2")
    launch("configs/accelerate/zero2.yaml", cfg_path)
    got = _check_losses(setup, out)
    assert got[0]["params_local"] == got[0]["params_total"]  # ZeRO-2 shards optimizer state, not weights


def test_zero3_shards_parameters_resumes_and_exports(setup):
    cfg_path, out = _config(setup, "zero3")
    launch("configs/accelerate/zero3.yaml", cfg_path, "--stop-after", "2")
    state = json.loads((out / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["world_size"] == 2
    launch("configs/accelerate/zero3.yaml", cfg_path)  # resumes at step 2
    got = _check_losses(setup, out)
    share = got[0]["params_local"] / got[0]["params_total"]
    assert 0.4 < share < 0.6, f"rank 0 holds {share:.0%} of the parameters under ZeRO-3"
    # release = the EMA, consolidated from both ranks' shards; equal to the reference EMA
    released = MMGenModel.from_pretrained(out / "release")
    for (name, p), e in zip(released.named_parameters(), setup[3].shadow):
        torch.testing.assert_close(p.data, e, rtol=0, atol=5e-5, msg=name)


@pytest.mark.parametrize("accelerate_cfg", ["ddp_cpu", "zero3"])
def test_distillation_in_two_processes_matches_single_process(tiny_assets, tmp_path, accelerate_cfg):
    """objective.distill (a second forward with gradient, a frozen teacher release) under DDP and under ZeRO-3,
    where the teacher must stay a whole model on each rank; weight 0.5 and two micro-batches per rank."""
    from mmgen.train.loop import Trainer

    Trainer(tiny_run(tiny_assets, tmp_path / "teacher", "train.steps=1")).train()
    teach = [f"objective.distill.teacher={tmp_path / 'teacher' / 'release'}", "objective.distill.guidance=2"]
    run = [f"train.steps={STEPS}", "train.grad_accum=2", "data.rows=1", "objective.distill.weight=0.5", *teach]
    cfg = tiny_run(tiny_assets, tmp_path / accelerate_cfg, *run)
    want, _, _ = reference(cfg)
    launch(f"configs/accelerate/{accelerate_cfg}.yaml", dump_config(cfg, tmp_path / "run.yaml"))
    got = metrics(tmp_path / accelerate_cfg)
    assert [m["step"] for m in got] == list(range(1, STEPS + 1)) and all(m["distill_loss"] > 0 for m in got)
    assert [m["loss"] for m in got] == pytest.approx(want, abs=2e-5)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "deepspeed").glob("*.json")), ids=lambda p: p.name)
def test_universal_checkpoint_load_is_refused(path: Path):
    """DeepSpeed's `checkpoint.load_universal` reads checkpoint files with torch.load(weights_only=False) around
    the trainer's weights_only=True reader: `Engine.load_state` refuses it with a named error. Checked on the
    config DeepSpeed parses from each of the project's ZeRO configs (which do not set it) and with it set."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from mmgen.errors import CheckpointError
    from mmgen.train.distributed import refuse_universal_load

    ds = json.loads(path.read_text())
    ds["bf16"] = {"enabled": False}  # "auto" is resolved by accelerate before DeepSpeed parses the config
    refuse_universal_load(DeepSpeedConfig(ds))
    ds["checkpoint"] = {"load_universal": True}
    with pytest.raises(
        CheckpointError,
        match=r'the DeepSpeed config sets "checkpoint": \{"load_universal": true\}: '
        r"DeepSpeed then reads checkpoint files with torch.load\(weights_only=False\)"
        r".* Remove load_universal from the DeepSpeed config",
    ):
        refuse_universal_load(DeepSpeedConfig(ds))
