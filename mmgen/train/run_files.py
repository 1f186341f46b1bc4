"""What a training run reads and writes besides its metrics: the weights it starts from (`train.init_from`), the
checks of a resumed run against its folder, its checkpoints, the release it exports and the sample grids it draws. `Trainer` (mmgen/train/loop.py) calls these
with itself; they read its state and never change it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from mmgen.config import ConfigError, flatten, read_yaml, to_dict
from mmgen.errors import CheckpointError
from mmgen.models.model import MMGenModel
from mmgen.train.checkpoint import export_release, save_checkpoint

if TYPE_CHECKING:
    from mmgen.train.loop import Trainer


def load_weights(model: MMGenModel, folder: str) -> None:
    """Start from a release folder's weights; every tensor must match in name and shape."""
    from safetensors.torch import load_file

    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise ConfigError(f"train.init_from: no model.safetensors in '{folder}' (give a release folder)")
    state = load_file(str(path))
    own = model.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if bad or set(state) - set(own):
        raise ConfigError(
            f"train.init_from: '{folder}' holds another architecture (first mismatch: "
            f"{(bad or sorted(set(state) - set(own)))[0]}); match model.* to it"
        )
    model.load_state_dict(state)


def config_changes(trainer: Trainer) -> list[str]:
    """'key: old -> new' for every setting that differs from the run's saved config.yaml (a resumed run
    may change its schedule or length on purpose; a forgotten output_dir should not pass unnoticed)."""
    saved = trainer.out / "config.yaml"
    if not saved.is_file():
        return []
    old, new = flatten(read_yaml(saved)), flatten(to_dict(trainer.cfg))
    return [f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def check_same_model(trainer: Trainer, ckpt: Path) -> None:
    """Refuse a checkpoint of another architecture than the config's (the run folder's model_config.json)."""
    saved = trainer.out / "model_config.json"
    if saved.is_file():
        # keys a run saved before an option existed take the option's legacy value (MMGenConfig's default)
        old = json.loads(json.dumps(type(trainer.mconf)(**json.loads(saved.read_text())).architecture()))
        new = json.loads(json.dumps(trainer.mconf.architecture()))
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise CheckpointError(
                f"checkpoint {ckpt} belongs to another model (differs in {', '.join(diff)}): set those "
                f"model options as the run had them (e.g. model.image_pos_embed=false for a run started before "
                f"that option), use another train.output_dir, or --resume none"
            )


def check_same_teacher(trainer: Trainer, ckpt: Path, state: dict) -> None:
    """Refuse to resume a distillation whose teacher release changed on disk since the checkpoint (a rerun of
    the teacher's stage overwrites it): the steps after the checkpoint would regress on another model."""
    saved, d = state.get("distill_teacher_sha256"), trainer.distill
    if saved and d is not None and d.teacher_sha256 and saved != d.teacher_sha256:
        teacher = trainer.cfg.objective.distill.teacher
        raise CheckpointError(
            f"checkpoint {ckpt} was trained against another teacher: objective.distill.teacher={teacher!r} now "
            f"holds other weights (model.safetensors sha256 {d.teacher_sha256[:12]}..., the checkpoint's "
            f"{saved[:12]}...); restore that release, or start a new train.output_dir (--resume none starts over)"
        )


def save(trainer: Trainer) -> Path:
    """A checkpoint of the trainer's step: weights, optimizer, EMA, data cursor and counters."""
    e = trainer.engine
    state = {
        "step": trainer.step,
        "tokens_seen": trainer.tokens_seen,
        "bad_in_a_row": trainer.bad_in_a_row,
        "world_size": e.world_size,
        "time": time.time(),
    }
    if trainer.distill is not None:
        state["distill_teacher_sha256"] = trainer.distill.teacher_sha256
    return save_checkpoint(
        e,
        trainer.out / "checkpoints",
        trainer.step,
        state,
        trainer.ema.state_dict(),
        trainer.data.cursor.state_dict(),
        trainer.cfg.train.keep_checkpoints,
    )


def export(trainer: Trainer) -> Path | None:
    """Release weights (the EMA, consolidated) + tokenizers, loadable with MMGenModel.from_pretrained."""
    e = trainer.engine
    with trainer.ema.swapped(e.param_shards()):
        sd = e.full_state_dict()
    path = None
    if e.is_main:
        run_yaml = yaml.safe_dump(to_dict(trainer.cfg), sort_keys=False)
        path = export_release(
            trainer.out / "release", MMGenModel, trainer.mconf, sd, trainer.text_tok, trainer.image_tok, run_yaml
        )
    e.barrier()
    return path


@torch.no_grad()
def sample_grid(trainer: Trainer) -> Path | None:
    """PNG grid of the EMA model's images for the config's fixed prompts (all ranks run it: under ZeRO-3
    every forward gathers parameters collectively)."""
    from mmgen.sampling.grid import save_grid
    from mmgen.sampling.interleaved import InterleavedSampler, SamplingOptions

    e = trainer.engine
    sc = trainer.cfg.sample
    model = e.unwrapped
    model.eval()
    opts = SamplingOptions(
        steps=sc.steps, guidance=sc.guidance, seed=sc.seed, image_first=True, stop_after_image=True, max_images=1
    )
    with trainer.ema.swapped(e.param_shards()), e.autocast():
        sampler = InterleavedSampler(model, trainer.text_tok, trainer.image_tok)
        rows = sampler.run([[p] for p in sc.prompts for _ in range(4)], opts)
    model.train()
    path = None
    if e.is_main:
        images = [r.segments[-1] for r in rows]
        grid_path = trainer.out / "samples" / f"step-{trainer.step:07d}.png"
        path = save_grid(images, grid_path, ncol=4, labels=[p for p in sc.prompts])
    return path
