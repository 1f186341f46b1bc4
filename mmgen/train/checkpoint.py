"""Resumable checkpoints that a crash can never destroy, and release exports.

A checkpoint is a folder `checkpoints/step-0000500/` written as `step-0000500.tmp/` by every rank
(model + optimizer + RNG through accelerate / DeepSpeed, this rank's EMA shard and data cursor), then
renamed by rank 0 once every rank has finished; `latest` (a one-line file, replaced atomically) names the
newest complete one. A crash mid-write leaves a `.tmp` folder that resumption ignores, and the previous
checkpoint untouched.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "trainer_state.json"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename a finished `tmp` folder to `final`; an existing `final` stays until the new one is in place."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.replace(old)
        tmp.replace(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.replace(final)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


def complete_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp") and (p / STATE_FILE).is_file())


def find_checkpoint(root: Path, resume: str) -> Path | None:
    """`auto`: the newest complete checkpoint under root (None if there is none); `none`: None; else a path."""
    if resume == "none":
        return None
    if resume == "auto":
        latest = root / "latest"
        if latest.is_file():
            p = root / latest.read_text().strip()
            if (p / STATE_FILE).is_file():
                return p
        found = complete_checkpoints(root)
        return found[-1] if found else None
    p = Path(resume)
    if not (p / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint folder (no {STATE_FILE} in it)")
    return p


def save_checkpoint(engine, root: Path, step: int, state: dict[str, Any], ema_state: dict[str, torch.Tensor],
                    cursor: dict[str, Any], keep: int) -> Path:  # fmt: skip
    """Called on every rank. `state` (rank 0's) goes to trainer_state.json; EMA and cursor are per rank."""
    final = step_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if engine.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    engine.barrier()
    engine.save_state(str(tmp))
    save_file({k: v.contiguous() for k, v in ema_state.items()}, str(tmp / f"ema_rank{engine.rank}.safetensors"))
    (tmp / f"cursor_rank{engine.rank}.json").write_text(json.dumps(cursor))
    engine.barrier()
    if engine.is_main:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        _swap_in(tmp, final)
        _write_atomic(root / "latest", final.name)
        for stale in complete_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(stale, ignore_errors=True)
    engine.barrier()
    return final


def load_checkpoint(engine, path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """Restore model/optimizer/RNG into the engine; return (trainer state, this rank's EMA, cursor)."""
    state = json.loads((path / STATE_FILE).read_text())
    if state.get("world_size") != engine.world_size:
        raise ValueError(
            f"checkpoint {path} was written by {state.get('world_size')} processes, this run has "
            f"{engine.world_size}: resume with the same number of processes"
        )
    engine.load_state(str(path))
    ema = load_file(str(path / f"ema_rank{engine.rank}.safetensors"))
    cursor = json.loads((path / f"cursor_rank{engine.rank}.json").read_text())
    return state, ema, cursor


def export_release(folder: Path, model_cls, model_config, state_dict: dict[str, torch.Tensor], text_tok,
                   image_tok, run_config_yaml: str | None = None) -> Path:  # fmt: skip
    """Write release weights (save_pretrained, safetensors) with both tokenizers, atomically (rank 0 only)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.device("meta"):
        shell = model_cls(model_config)
    shell.load_state_dict(state_dict, assign=True)  # real tensors replace the meta ones, no second copy
    shell.save_pretrained(str(tmp))
    text_tok.save_pretrained(str(tmp))
    image_tok.save_pretrained(tmp / "image_tokenizer")
    if run_config_yaml is not None:
        (tmp / "run_config.yaml").write_text(run_config_yaml)
    _swap_in(tmp, folder)
    return folder
