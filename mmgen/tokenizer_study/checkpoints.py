"""Checkpoints of image tokenizer training: written atomically, pruned, and resumed only with an unchanged recipe.

A checkpoint `checkpoints/step_XXXXXXXX.pt` of the artifact folder holds the model and optimiser state after
that many steps and the recipe it was trained with (`train.py` reseeds every step, so a resumed run continues
exactly as an uninterrupted one).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmgen.config import ImageTokenizerRecipe, to_dict
from mmgen.errors import MissingInput
from mmgen.tokenizer.image import ImageTokenizer

# Recipe fields that may change when a run is resumed (everything else must match the checkpoint).
RESUMABLE_CHANGES = {"steps", "log_every", "ckpt_every", "val_images", "stats_batches"}


def _checkpoints(folder: Path) -> list[Path]:
    return sorted((folder / "checkpoints").glob("step_*.pt"))


def save_checkpoint(folder: Path, model: ImageTokenizer, opt: torch.optim.Optimizer, step: int, keep: int = 1) -> Path:
    """Training state after `step` steps; written to a temp file and renamed; older ones pruned to `keep`."""
    path = folder / "checkpoints" / f"step_{step:08d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(), "recipe": to_dict(model.recipe)}
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    for old in _checkpoints(folder)[:-keep]:
        old.unlink()
    return path


def resolve_resume(folder: Path, resume: str | None) -> Path | None:
    """`auto`: the newest checkpoint in the folder (None if there is none); `none`: start fresh; else a path."""
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        found = _checkpoints(folder)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_file():
        raise MissingInput(f"--resume {resume}: no such checkpoint (use auto, none, or a step_*.pt path)")
    return path


def load_checkpoint(path: Path, model: ImageTokenizer, opt: torch.optim.Optimizer) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved, now = state["recipe"], to_dict(model.recipe)
    # a field added after the checkpoint was written (patch_linear) counts as its default there
    saved = {k: saved.get(k, getattr(ImageTokenizerRecipe, k, None)) for k in now}
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved[k] != now[k])
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"cannot resume {path}: the recipe changed ({diff}); use --resume none to start over")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return int(state["step"])
