"""Damaged checkpoints through the real training entry point (scripts/train.py `main`, in-process): each is
one named error line and exit code 2, never a traceback; resumption falls back to the newest checkpoint that
verifies; a planted pickle (single process or DeepSpeed, with or without a manifest) never runs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import assert_refused
from helpers import launch, metrics, tiny_run

from mmgen.config import RunConfig, dump_config, load_config
from mmgen.errors import ConfigError
from mmgen.train.manifest import MANIFEST_FILE, write_manifest


# ------------------------------------------------------------------------------------------- checkpoints
def test_keep_checkpoints_0_keeps_every_one_and_negative_is_refused():
    assert load_config(RunConfig, None, ["train.keep_checkpoints=0"]).train.keep_checkpoints == 0
    with pytest.raises(ConfigError, match=r"'train.keep_checkpoints' = -1 is out of range \(allowed: >= 0\)"):
        load_config(RunConfig, None, ["train.keep_checkpoints=-1"])


@pytest.fixture(scope="module")
def run3(train, tmp_path_factory):
    """A run stopped after 3 steps with a checkpoint at every step, every one kept (keep_checkpoints=0)."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    code, _, err = train(out, "train.ckpt_every=1", "train.keep_checkpoints=0", "--stop-after", "3")
    assert code == 0, err[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest",
        *[f"step-000000{i}" for i in (1, 2, 3)],
    ]
    return out


def copy_run(run3: Path, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "run"
    shutil.copytree(run3, out)
    return out, out / "checkpoints"


def truncate(path: Path, keep: int = 20) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def legacy(folder: Path) -> Path:
    """The checkpoint as an older version wrote it: no manifest."""
    (folder / MANIFEST_FILE).unlink()
    return folder


class Payload:
    """Unpickling this runs `open(marker, "w")`: the file appears only if the pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def marker_of(ck: Path) -> Path:
    return ck.parent / "MARKER"


def _damage(kind: str, ck: Path) -> list[str]:
    """Damage the run's checkpoints; returns the extra command-line arguments of the resume."""
    import torch

    s3 = ck / "step-0000003"
    if kind == "half-deleted":
        (s3 / "model.safetensors").unlink()
        return ["--resume", str(s3)]
    if kind == "missing-folder":
        return ["--resume", str(ck / "step-0000009")]
    if kind == "deleting-folder":
        s3.replace(ck / "step-0000003.deleting")
        return ["--resume", str(ck / "step-0000003.deleting")]
    if kind == "no-trainer-state":
        (s3 / "trainer_state.json").unlink()
        return ["--resume", str(s3)]
    if kind == "truncated-cursor":
        truncate(s3 / "cursor_rank0.json", 5)
        return ["--resume", str(s3)]
    if kind == "planted-file":
        (s3 / "extra.pkl").write_bytes(b"\x80\x04N.")
        return ["--resume", str(s3)]
    if kind == "every-ema-truncated":
        for s in ck.glob("step-*"):
            truncate(s / "ema_rank0.safetensors")
        return []
    if kind == "legacy-truncated-ema":
        truncate(legacy(s3) / "ema_rank0.safetensors")
        return ["--resume", str(s3)]
    if kind == "legacy-truncated-cursor":
        truncate(legacy(s3) / "cursor_rank0.json", 5)
        return ["--resume", str(s3)]
    if kind == "legacy-cursor-of-wrong-shape":
        (legacy(s3) / "cursor_rank0.json").write_text('{"positions": 5}')
        return ["--resume", str(s3)]
    if kind == "legacy-state-without-step":
        (legacy(s3) / "trainer_state.json").write_text('{"world_size": 1}')
        return ["--resume", str(s3)]
    if kind == "legacy-garbage-state":
        (legacy(s3) / "trainer_state.json").write_text("{garbage")
        return ["--resume", str(s3)]
    if kind == "legacy-planted-optimizer":  # no manifest to catch it: accelerate's weights_only load refuses it
        torch.save({"state": Payload(marker_of(ck))}, legacy(s3) / "optimizer.bin")
        return ["--resume", str(s3)]
    if kind == "legacy-truncated-model":
        truncate(legacy(s3) / "model.safetensors")
        return ["--resume", str(s3)]
    if kind == "another-model":
        return ["model.depth=3"]
    if kind == "other-num-workers":
        return ["data.num_workers=2"]
    raise AssertionError(kind)


BAD_CHECKPOINTS = [
    (
        "half-deleted",
        r"step-0000003: cannot resume from this folder: model.safetensors is missing.*the newest one "
        r"that does is .*step-0000002",
    ),
    ("missing-folder", r"step-0000009: cannot resume from this folder: no such folder"),
    ("deleting-folder", r"cannot resume from this folder: an unfinished write or a checkpoint being deleted"),
    ("no-trainer-state", r"cannot resume from this folder: no trainer_state.json in it"),
    ("truncated-cursor", r"cursor_rank0.json has 5 bytes, the manifest says \d+ \(truncated or replaced\)"),
    ("planted-file", r"extra.pkl is not in the manifest \(a file the trainer did not write\)"),
    (
        "every-ema-truncated",
        r"no checkpoint under .* can be resumed from \(step-0000003: ema_rank0.safetensors has "
        r"20 bytes.*step-0000001: .*Start afresh with --resume none",
    ),
    ("legacy-truncated-ema", r"step-0000003: cannot load ema_rank0.safetensors .*--resume none"),
    ("legacy-truncated-cursor", r"step-0000003: cannot load cursor_rank0.json \(JSONDecodeError"),
    ("legacy-cursor-of-wrong-shape", r"the checkpoint's data cursor is malformed \(KeyError: 'num_workers'\)"),
    ("legacy-state-without-step", r"step-0000003: cannot load trainer_state.json \(KeyError: 'step'\)"),
    ("legacy-garbage-state", r"step-0000003: cannot load trainer_state.json"),
    ("legacy-truncated-model", r"step-0000003: cannot load the model and optimizer state"),
    (
        "legacy-planted-optimizer",
        r"step-0000003: refused to load: it asks for \S*open, which a checkpoint written "
        r"by this trainer never holds.*--resume none",
    ),
    ("another-model", r"belongs to another model \(differs in depth, .*--resume none"),
    ("other-num-workers", r"written with 1 DataLoader workers, this run has 2: resume with data.num_workers=1"),
]


@pytest.mark.parametrize("kind,message", BAD_CHECKPOINTS, ids=[c[0] for c in BAD_CHECKPOINTS])
def test_damaged_checkpoints_are_a_named_error(train, run3, tmp_path, kind, message):
    out, ck = copy_run(run3, tmp_path)
    assert_refused(train(out, *_damage(kind, ck)), message)
    assert not marker_of(ck).exists()  # nothing planted ran


def test_truncated_newest_checkpoint_falls_back_and_replayed_steps_replace_their_rows(train, run3, tmp_path):
    out, ck = copy_run(run3, tmp_path)
    assert [m["step"] for m in metrics(out)] == [1, 2, 3]
    before = {m["step"]: m for m in metrics(out)}
    truncate(ck / "step-0000003" / "model.safetensors", 1000)
    code, stdout, err = train(out, "--stop-after", "2")
    assert code == 0, err[-3000:]
    assert (
        "resuming from step-0000002, the newest checkpoint that verifies; passed over step-0000003: "
        "model.safetensors has 1000 bytes"
    ) in stdout
    assert "metrics.jsonl: 1 row(s) after step 2 removed" in stdout
    rows = metrics(out)
    assert [m["step"] for m in rows] == [1, 2, 3, 4]  # step 3 once: the replayed row replaced the earlier one
    assert rows[2]["loss"] == pytest.approx(before[3]["loss"], abs=1e-6)  # and the replay is exact


def test_stop_and_resume_leaves_one_metrics_row_per_step(train, tmp_path):
    out = tmp_path / "run"
    assert train(out, "--stop-after", "3")[0] == 0
    code, stdout, err = train(out)
    assert code == 0 and "resumed from" in stdout
    assert "random-number state" not in err  # restored: no warning
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4, 5, 6]


def test_pruning_renames_before_deleting(train, run3, tmp_path):
    """A kill mid-delete leaves `step-*.deleting`, which is never resumed from and is cleared by the next save;
    keep_checkpoints=2 keeps exactly two finished folders."""
    from mmgen.train.checkpoint import find_checkpoint

    out, ck = copy_run(run3, tmp_path)
    half = ck / "step-0000004.deleting"  # what a kill while deleting a newer folder would leave
    shutil.copytree(ck / "step-0000003", half)
    (half / "model.safetensors").unlink()
    assert find_checkpoint(ck, "auto").name == "step-0000003"
    assert train(out, "train.ckpt_every=1", "train.keep_checkpoints=2", "--stop-after", "1")[0] == 0
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step-0000003", "step-0000004"]


def test_a_failed_rng_state_load_is_reported(train, run3, tmp_path):
    out, ck = copy_run(run3, tmp_path)
    (legacy(ck / "step-0000003") / "random_states_0.pkl").write_bytes(b"not a pickle")
    code, stdout, err = train(out, "--stop-after", "1")
    assert code == 0, err[-3000:]
    assert "has no manifest (written before manifests existed): loaded unverified" in stdout
    assert "warning: rank 0: the random-number state in" in err and "was not restored" in err


# ------------------------------------------------------------------------------------------- DeepSpeed
@pytest.mark.distributed
def test_planted_pickle_in_a_zero2_checkpoint_never_runs(tiny_assets, tmp_path):
    """ZeRO-2 on one CPU process. A pickle planted in place of DeepSpeed's model-state file is refused by the
    manifest; with the manifest forged to match, DeepSpeed's reader (weights_only=True here) refuses it; so it
    does planted in the optimizer-state file of a folder without a manifest (accepted as written before
    manifests existed, with a note). None of them runs. The genuine files then resume, without a manifest too
    (the allow-list covers real DeepSpeed state)."""
    import torch

    out = tmp_path / "run"
    marker = marker_of(out / "checkpoints")
    cfg = dump_config(tiny_run(tiny_assets, out), tmp_path / "c.yaml")
    launch("configs/accelerate/zero2.yaml", cfg, "--stop-after", "2", processes=1)
    ck = out / "checkpoints" / "step-0000002"
    model_file = ck / "pytorch_model" / "mp_rank_00_model_states.pt"
    optim_file = ck / "pytorch_model" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    genuine = {f: f.read_bytes() for f in (model_file, optim_file)}
    torch.save({"module": Payload(marker)}, model_file)

    refused = launch("configs/accelerate/zero2.yaml", cfg, processes=1, check=False)
    assert refused.returncode != 0 and not marker.exists()
    assert re.search(
        r"error: no checkpoint under \S+ can be resumed from \(step-0000002: pytorch_model/"
        r"mp_rank_00_model_states.pt has \d+ bytes, the manifest says",
        refused.stderr,
    ), refused.stderr[-3000:]

    write_manifest(ck)  # an attacker who can write the folder can rewrite the manifest too
    refused = launch("configs/accelerate/zero2.yaml", cfg, processes=1, check=False)
    assert refused.returncode != 0 and not marker.exists()
    assert "mp_rank_00_model_states.pt: refused to load: it asks for io.open" in refused.stderr, refused.stderr[-3000:]

    model_file.write_bytes(genuine[model_file])
    torch.save({"optimizer_state_dict": Payload(marker)}, optim_file)
    legacy(ck)
    refused = launch("configs/accelerate/zero2.yaml", cfg, processes=1, check=False)
    assert refused.returncode != 0 and not marker.exists()
    assert "has no manifest (written before manifests existed): loaded unverified" in refused.stdout
    assert "optim_states.pt: refused to load: it asks for io.open" in refused.stderr, refused.stderr[-3000:]

    optim_file.write_bytes(genuine[optim_file])
    resumed = launch("configs/accelerate/zero2.yaml", cfg, "--stop-after", "1", processes=1)
    assert f"resumed from {ck} at step 2" in resumed.stdout and not marker.exists()
    assert "has no manifest (written before manifests existed): loaded unverified" in resumed.stdout


@pytest.mark.distributed
def test_two_ranks_stop_together_when_rank_0_refuses_the_checkpoint(tiny_assets, tmp_path):
    """Only rank 0 verifies the checkpoint (each file hashed once, not once per rank); rank 1 follows its
    choice, and stops with it when rank 0 refuses (instead of waiting for ever in the next collective)."""
    out = tmp_path / "run"
    cfg = dump_config(tiny_run(tiny_assets, out), tmp_path / "c.yaml")
    launch("configs/accelerate/ddp_cpu.yaml", cfg, "--stop-after", "1")
    ck = out / "checkpoints" / "step-0000001"
    truncate(ck / "model.safetensors")
    refused = launch("configs/accelerate/ddp_cpu.yaml", cfg, "--resume", str(ck), check=False)
    # both ranks stop (no hang): a rank exits with code 2 after its line, or is ended by a signal when the
    # launcher stops it once the other has exited (which of the two gets there first is a race; rank 1's
    # process group may also abort when rank 0's side closes); the launcher then prints its own traceback
    codes = dict(re.findall(r"rank\s*: (\d) \(local_rank: \d\)\s+exitcode\s*: (-?\d+)", refused.stderr))
    assert refused.returncode != 0 and codes and all(int(c) != 0 for c in codes.values()), codes
    assert not any("mmgen" in tb for tb in refused.stderr.split("Traceback")[1:]), refused.stderr[-3000:]
    assert f"error: --resume {ck}: cannot resume from this folder: model.safetensors has 20 bytes" in refused.stderr
    if codes.get("1") == "2":  # rank 1 ran to its own line
        assert "error: rank 0 refused to resume (its error says why and how to fix it); rank 1 stops" in refused.stderr
