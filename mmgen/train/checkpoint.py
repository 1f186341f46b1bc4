"""Resumable checkpoints that a crash can never destroy, and release exports.

A checkpoint is a folder `checkpoints/step-0000500/` written as `step-0000500.tmp/` by every rank
(model + optimizer + RNG through accelerate / DeepSpeed, this rank's EMA shard and data cursor), then
finished by rank 0 once every rank is done: `trainer_state.json`, then `manifest.json` (every file's size
and sha256, see manifest.py) last, then the rename; `latest` (a one-line file, replaced atomically) names
the newest one. A crash mid-write leaves a `.tmp` folder that resumption ignores, and the previous
checkpoint untouched. Pruning renames a folder to `.deleting` before deleting it, so a kill mid-delete never
leaves a folder that looks complete with files missing.

Resumption (`choose_checkpoint`) takes the newest checkpoint whose files match its manifest, and says which
one it took and why it passed over newer ones (truncated, half-deleted, changed files). A checkpoint written
before manifests existed is accepted with a printed note ("loaded unverified"). The manifest catches damage,
not an attacker (whoever can plant a file can rewrite the manifest): what keeps a planted pickle from running
is that every file is read without unpickling code, safetensors and `torch.load(weights_only=True)`, under
DeepSpeed too (distributed.py). Only rank 0 reads and hashes the files; it sends its choice to the others
(`choose_on_rank0`).
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmgen.errors import CheckpointError
from mmgen.train.manifest import check_manifest, has_manifest, write_manifest

STATE_FILE = "trainer_state.json"
NAME = re.compile(r"step-\d+")  # a finished checkpoint folder (not .tmp, .old, .deleting)


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
    return sorted(
        p for p in root.glob("step-*") if NAME.fullmatch(p.name) and p.is_dir() and (p / STATE_FILE).is_file()
    )


def delete_checkpoint(folder: Path) -> None:
    """Rename first, then delete: a kill mid-delete leaves `*.deleting`, which nothing resumes from."""
    doomed = folder.with_name(folder.name + ".deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    folder.replace(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def checkpoint_problem(folder: Path) -> str:
    """'' if `folder` can be resumed from, else why not (in words). A folder without a manifest (written before
    manifests existed) passes: `Resume.notes` says it was loaded unverified."""
    if not folder.is_dir():
        return "no such folder"
    if not NAME.fullmatch(folder.name):
        return "an unfinished write or a checkpoint being deleted (the name is not step-NNNNNNN)"
    if not (folder / STATE_FILE).is_file():
        return f"no {STATE_FILE} in it (an unfinished or half-deleted checkpoint)"
    return check_manifest(folder) if has_manifest(folder) else ""


@dataclass
class Resume:
    """The checkpoint to resume from (None: start afresh) and what was passed over on the way, in words."""

    path: Path | None
    notes: list[str] = field(default_factory=list)


def _scan(root: Path) -> tuple[Path | None, list[str]]:
    """(the newest checkpoint under root that verifies, 'name: problem' for each newer one that does not)."""
    passed: list[str] = []
    for path in reversed(complete_checkpoints(root)):
        problem = checkpoint_problem(path)
        if not problem:
            return path, passed
        passed.append(f"{path.name}: {problem}")
    return None, passed


def choose_checkpoint(root: Path, resume: str) -> Resume:
    """`auto`: the newest checkpoint under root that verifies (None if there is none at all); `none`: None;
    else that folder, which must verify. One without a manifest (written before manifests existed) is taken
    with a note; never one whose manifest fails."""
    if resume == "none":
        return Resume(None)
    if resume != "auto":
        path = Path(resume)
        problem = checkpoint_problem(path)
        if problem:
            good = _scan(path.parent)[0]
            other = f" (the newest one that does is {good})" if good is not None else ""
            raise CheckpointError(
                f"--resume {resume}: cannot resume from this folder: {problem}. Pass a checkpoint "
                f"folder that verifies{other}, or --resume auto to take the newest one"
            )
        return Resume(path, _unverified_note(path))
    path, passed = _scan(root)
    if path is None and passed:
        raise CheckpointError(
            f"no checkpoint under {root} can be resumed from ({'; '.join(passed)}). Start afresh with --resume none "
            f"(or another train.output_dir); the damaged folders can be deleted"
        )
    if path is None:
        return Resume(None)
    notes = [f"resuming from {path.name}, the newest checkpoint that verifies; passed over {'; '.join(passed)}"]
    return Resume(path, (notes if passed else []) + _unverified_note(path))


def _unverified_note(path: Path) -> list[str]:
    return (
        [] if has_manifest(path) else [f"{path} has no manifest (written before manifests existed): loaded unverified"]
    )


def find_checkpoint(root: Path, resume: str) -> Path | None:
    """The folder `choose_checkpoint` resumes from."""
    return choose_checkpoint(root, resume).path


def choose_on_rank0(engine, root: Path, resume: str) -> Resume:
    """`choose_checkpoint` run on rank 0 alone, which reads and hashes every file once instead of once per
    rank; the others receive its choice as a step number. A refusal on rank 0 stops every rank."""
    if engine.world_size == 1:
        return choose_checkpoint(root, resume)
    chosen, refusal = Resume(None), None
    if engine.is_main:
        try:
            chosen = choose_checkpoint(root, resume)
        except CheckpointError as e:
            refusal = e
    # rank 0's choice (the other ranks add 0): -2 refused, -1 start afresh, else the step of the folder
    mine = -2 if refusal is not None else -1 if chosen.path is None else int(chosen.path.name.removeprefix("step-"))
    code = int(engine.all_reduce([float(mine) if engine.is_main else 0.0])[0])
    if refusal is not None:
        raise refusal
    if code == -2:
        raise CheckpointError(
            f"rank 0 refused to resume (its error says why and how to fix it); rank {engine.rank} stops with it"
        )
    if engine.is_main or code == -1:
        return chosen
    return Resume(Path(resume) if resume not in ("auto", "none") else step_dir(root, code))


def save_checkpoint(
    engine,
    root: Path,
    step: int,
    state: dict[str, Any],
    ema_state: dict[str, torch.Tensor],
    cursor: dict[str, Any],
    keep: int,
) -> Path:
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
        write_manifest(tmp)  # last: a folder with a manifest that verifies is complete
        _swap_in(tmp, final)
        _write_atomic(root / "latest", final.name)
        for stale in complete_checkpoints(root)[:-keep] if keep > 0 else []:
            delete_checkpoint(stale)
        for leftover in root.glob("step-*.deleting"):  # a delete that an earlier kill interrupted
            shutil.rmtree(leftover, ignore_errors=True)
    engine.barrier()
    return final


def _unloadable(path: Path, what: str, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path}: cannot load {what} ({type(e).__name__}: {' '.join(str(e).split())}). Resume from an "
        f"older checkpoint (--resume {path.parent}/step-...) or start afresh with --resume none"
    )


def refused_pickle(where: str, e: pickle.UnpicklingError) -> CheckpointError:
    """A checkpoint file that torch.load(weights_only=True) refused: it asks for code or a class to be run."""
    found = re.search(r"GLOBAL (\S+)", str(e))
    wants = found.group(1) if found else str(e).strip().splitlines()[-1]
    return CheckpointError(
        f"{where}: refused to load: it asks for {wants}, which a checkpoint written by this trainer never holds "
        f"(the file may have been planted or written by another program). Delete this checkpoint folder and "
        f"resume from an older one (--resume auto takes the newest that verifies), or start afresh with "
        f"--resume none"
    )


def load_checkpoint(engine, path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """Restore model/optimizer/RNG into the engine; return (trainer state, this rank's EMA, cursor).
    Anything unreadable is a CheckpointError naming the folder and the fix."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
        world, _, _ = state["world_size"], int(state["step"]), int(state["tokens_seen"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _unloadable(path, STATE_FILE, e) from e
    if world != engine.world_size:
        raise CheckpointError(
            f"checkpoint {path} was written by {world} processes, this run has "
            f"{engine.world_size}: resume with the same number of processes"
        )
    try:
        engine.load_state(str(path))
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:  # accelerate's torch.load(weights_only=True) met a global it refuses
        raise refused_pickle(f"checkpoint {path}", e) from None
    except (OSError, RuntimeError, ValueError, EOFError, KeyError, SafetensorError) as e:
        raise _unloadable(path, "the model and optimizer state", e) from e
    ema_file, cursor_file = path / f"ema_rank{engine.rank}.safetensors", path / f"cursor_rank{engine.rank}.json"
    try:
        ema = load_file(str(ema_file))
    except (OSError, SafetensorError) as e:
        raise _unloadable(path, ema_file.name, e) from e
    try:
        cursor = json.loads(cursor_file.read_text())
    except (OSError, ValueError) as e:
        raise _unloadable(path, cursor_file.name, e) from e
    return state, ema, cursor


def export_release(
    folder: Path,
    model_cls,
    model_config,
    state_dict: dict[str, torch.Tensor],
    text_tok,
    image_tok,
    run_config_yaml: str | None = None,
) -> Path:
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
