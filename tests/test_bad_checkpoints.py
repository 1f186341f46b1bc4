"""Bad shards and damaged checkpoints through the real training entry point (scripts/train.py `main`,
in-process): each is one named error line and exit code 2, never a traceback or a hang; a bad sample is a
counted, reported skip; resumption falls back to the newest checkpoint that verifies; a planted pickle in a
DeepSpeed checkpoint never runs."""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import REPO
from test_distributed import launch
from test_tokenizer_eval import _script
from test_train import metrics, tiny_run

from mmgen.config import ShapesConfig, dump_config
from mmgen.data.documents import to_sample
from mmgen.data.shapes import ShapesGenerator
from mmgen.train.manifest import MANIFEST_FILE, write_manifest

HANG_S = 120  # any case still running after this long is a hang: the test fails


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail the test (instead of waiting for ever) if the block runs longer than `seconds`. The alarm repeats
    every second after that: code that swallows one exception (webdataset's skip handler) meets the next."""

    def hung(*_):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def train(tiny_assets, tmp_path_factory):
    """train(out, *args) -> (exit code, stdout, stderr) of scripts/train.py on the tiny test model."""
    base = dump_config(tiny_run(tiny_assets, tmp_path_factory.mktemp("cfg") / "unused"),
                       tmp_path_factory.mktemp("cfg") / "tiny.yaml")  # fmt: skip
    main, cwd = _script("train").main, os.getcwd()

    def run(out: Path, *args: str) -> tuple[int, str, str]:
        stdout, stderr = io.StringIO(), io.StringIO()
        code = 0
        try:
            with deadline(HANG_S), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                main(["--config", str(base), f"train.output_dir={out}", *args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            os.chdir(cwd)  # main() runs in the repository root
        return code, stdout.getvalue(), stderr.getvalue()

    return run


def assert_refused(result: tuple[int, str, str], message: str) -> None:
    """Exit code 2, the last line of stderr is `error: ...` matching `message`, and no traceback anywhere."""
    code, out, err = result
    assert code == 2, (code, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(message, last), last


# ------------------------------------------------------------------------------------------- bad shards
def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def good_sample(i: int) -> dict[str, bytes]:
    doc = ShapesGenerator(ShapesConfig(image_size=16)).document(i)
    return {f"{doc.key}.{ext}": v for ext, v in to_sample(doc).items() if ext != "__key__"}


def json_samples(n: int, text: bytes) -> dict[str, bytes]:
    return {f"bad{i:03d}.json": text for i in range(n)}


PNG = next(v for k, v in good_sample(0).items() if k.endswith(".png"))

# (id, shard members or raw bytes, the named error); every shard set here has no readable document
BAD_SHARDS = [
    ("random-bytes", random.Random(0).randbytes(20_000), r"ReadError: "),
    ("zero-byte-tar", b"", r"ReadError: empty file"),
    ("tar-without-samples", {}, r"they hold no samples"),
    ("readme-only", {"README.txt": b"hello"}, r"sample 'README' has no \.json part"),
    ("segments-of-numbers", json_samples(8, b'{"segments": [5]}'), r"segment 0 is 5, not an object"),
    ("json-is-a-number", json_samples(8, b"5"), r"\.json holds 5, not a non-empty list of segments"),
    ("text-null", json_samples(8, b'{"segments": [{"text": null}]}'), r"segment 0 has text None, not a string"),
    ("not-json", json_samples(8, b"{not json"), r"unreadable \.json \(JSONDecodeError"),
    ("image-index-string", json_samples(8, b'{"segments": [{"image": "0"}]}'), r"image '0', not an image index"),
    ("image-missing", json_samples(8, b'{"segments": [{"text": "a"}, {"image": 0}]}'), r"image 0 is missing"),
    ("broken-png", {"a.json": b'{"segments": [{"image": 0}]}', "a.0.png": PNG[:40]}, r"cannot decode image"),
    ("no-json-part", {"a.0.png": PNG}, r"has no \.json part"),
]


@pytest.mark.parametrize("name,content,message", BAD_SHARDS, ids=[c[0] for c in BAD_SHARDS])
def test_shards_without_a_readable_document_are_a_named_error(train, tmp_path, name, content, message):
    shards = tmp_path / "shards"
    shards.mkdir()
    if isinstance(content, bytes):
        (shards / "s-000000.tar").write_bytes(content)
    else:
        write_tar(shards / "s-000000.tar", content)
    result = train(tmp_path / "run", "data.source=shards", f"data.shards={shards}")
    assert_refused(result, r"no readable document in a whole pass over 1 shard\(s\) \(\S+/s-000000.tar\): .*" + message)


def test_unreadable_shards_in_a_dataloader_worker_keep_their_message(train, tmp_path):
    """Raised in a worker process, the error reaches the main process as itself (not re-wrapped with the
    worker's traceback pasted into the message)."""
    (tmp_path / "shards").mkdir()
    write_tar(tmp_path / "shards" / "s-000000.tar", json_samples(4, b'{"segments": [5]}'))
    result = train(tmp_path / "run", "data.source=shards", f"data.shards={tmp_path / 'shards'}", "data.num_workers=1")
    assert_refused(result, r"^error: no readable document in a whole pass over 1 shard.*segment 0 is 5, not an object")


def test_skip_report_is_bounded():
    from mmgen.data.skips import SkipReport

    report = SkipReport(first=5, every=1000)
    lines = [line for i in range(3000) if (line := report.add(f"k{i}", "bad")) is not None]
    assert len(lines) == 7 and report.count == 3000
    assert lines[4].endswith("(from now on one line per 1000 skipped samples; metrics.jsonl counts them as data_skipped)")
    assert lines[5:] == ["1005 unreadable samples skipped so far (the latest: k1004: bad)",
                         "2005 unreadable samples skipped so far (the latest: k2004: bad)"]  # fmt: skip


def test_no_shards_at_all(train, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_refused(train(tmp_path / "run", "data.source=shards", f"data.shards={tmp_path / 'empty'}"),
                   r"data.shards: no shards found")  # fmt: skip


def test_random_bytes_shard_in_a_real_process_exits_with_one_line(tiny_assets, tmp_path):
    """The same as above in its own process (the way a user runs it), under a hard timeout."""
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "x.tar").write_bytes(random.Random(1).randbytes(5000))
    cfg = dump_config(tiny_run(tiny_assets, tmp_path / "run", "data.source=shards", f"data.shards={tmp_path / 'shards'}"),
                      tmp_path / "c.yaml")  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--config", str(cfg)], env=env,
                         capture_output=True, text=True, timeout=HANG_S)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith("error: no readable document in a whole pass over 1 shard")


def test_bad_samples_are_skipped_counted_and_reported_at_a_bounded_rate(train, tmp_path):
    """Shards mixing good documents with every kind of bad sample train to the end; metrics.jsonl counts the
    skips; the trainer prints the first five one by one (the stream's logger too), not one line per skip."""
    shards = tmp_path / "shards"
    good = {k: v for i in range(12) for k, v in good_sample(i).items()}
    bad = {**json_samples(3, b'{"segments": [5]}'), "num.json": b"5", "nul.json": b'{"segments": [{"text": null}]}',
           "nojson.0.png": PNG, "broken.json": b"{not json", "trunc.json": b'{"segments": [{"image": 0}]}',
           "trunc.0.png": PNG[:40]}  # fmt: skip
    shards.mkdir()
    write_tar(shards / "s-000000.tar", {**good, **bad})
    code, out, err = train(tmp_path / "run", "data.source=shards", f"data.shards={shards}", "train.steps=4")
    assert code == 0 and "Traceback" not in out + err, err[-3000:]
    skipped = metrics(tmp_path / "run")[-1]["data_skipped"]
    assert skipped >= len(bad) and skipped % len(bad) == 0  # every pass over the shard skips the same 9
    assert out.count("skipping unreadable sample") == 5 and "one line per 1000" in out
    assert err.count("skipping unreadable sample") <= 5


# ------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def run3(train, tmp_path_factory):
    """A run stopped after 3 steps with a checkpoint at every step (kept: 3)."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    code, _, err = train(out, "train.ckpt_every=1", "train.keep_checkpoints=3", "--stop-after", "3")
    assert code == 0, err[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", *[f"step-000000{i}" for i in (1, 2, 3)]]
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


def _damage(kind: str, ck: Path) -> list[str]:
    """Damage the run's checkpoints; returns the extra command-line arguments of the resume."""
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
    if kind == "legacy-truncated-model":
        truncate(legacy(s3) / "model.safetensors")
        return ["--resume", str(s3)]
    if kind == "another-model":
        return ["model.depth=3"]
    if kind == "other-num-workers":
        return ["data.num_workers=2"]
    raise AssertionError(kind)


BAD_CHECKPOINTS = [
    ("half-deleted", r"step-0000003: cannot resume from this folder: model.safetensors is missing.*the newest one "
                     r"that does is .*step-0000002"),  # fmt: skip
    ("missing-folder", r"step-0000009: cannot resume from this folder: no such folder"),
    ("deleting-folder", r"cannot resume from this folder: an unfinished write or a checkpoint being deleted"),
    ("no-trainer-state", r"cannot resume from this folder: no trainer_state.json in it"),
    ("truncated-cursor", r"cursor_rank0.json has 5 bytes, the manifest says \d+ \(truncated or replaced\)"),
    ("planted-file", r"extra.pkl is not in the manifest \(a file the trainer did not write\)"),
    ("every-ema-truncated", r"no checkpoint under .* can be resumed from \(step-0000003: ema_rank0.safetensors has "
                            r"20 bytes.*step-0000001: .*Start afresh with --resume none"),  # fmt: skip
    ("legacy-truncated-ema", r"step-0000003: cannot load ema_rank0.safetensors .*--resume none"),
    ("legacy-truncated-cursor", r"step-0000003: cannot load cursor_rank0.json \(JSONDecodeError"),
    ("legacy-cursor-of-wrong-shape", r"the checkpoint's data cursor is malformed \(KeyError: 'num_workers'\)"),
    ("legacy-state-without-step", r"step-0000003: cannot load trainer_state.json \(KeyError: 'step'\)"),
    ("legacy-garbage-state", r"step-0000003: cannot load trainer_state.json"),
    ("legacy-truncated-model", r"step-0000003: cannot load the model and optimizer state"),
    ("another-model", r"belongs to another model \(differs in depth, .*--resume none"),
    ("other-num-workers", r"written with 1 DataLoader workers, this run has 2: resume with data.num_workers=1"),
]


@pytest.mark.parametrize("kind,message", BAD_CHECKPOINTS, ids=[c[0] for c in BAD_CHECKPOINTS])
def test_damaged_checkpoints_are_a_named_error(train, run3, tmp_path, kind, message):
    out, ck = copy_run(run3, tmp_path)
    assert_refused(train(out, *_damage(kind, ck)), message)


def test_truncated_newest_checkpoint_falls_back_and_replayed_steps_replace_their_rows(train, run3, tmp_path):
    out, ck = copy_run(run3, tmp_path)
    assert [m["step"] for m in metrics(out)] == [1, 2, 3]
    before = {m["step"]: m for m in metrics(out)}
    truncate(ck / "step-0000003" / "model.safetensors", 1000)
    code, stdout, err = train(out, "--stop-after", "2")
    assert code == 0, err[-3000:]
    assert ("resuming from step-0000002, the newest checkpoint that verifies; passed over step-0000003: "
            "model.safetensors has 1000 bytes") in stdout  # fmt: skip
    assert "metrics.jsonl: 1 row(s) after step 2 removed" in stdout
    rows = metrics(out)
    assert [m["step"] for m in rows] == [1, 2, 3, 4]  # step 3 once: the replayed row replaced the earlier one
    assert rows[2]["loss"] == pytest.approx(before[3]["loss"], abs=1e-6)  # and the replay is exact


def test_stop_and_resume_leaves_one_metrics_row_per_step(train, tmp_path):
    out = tmp_path / "run"
    assert train(out, "--stop-after", "3")[0] == 0
    code, stdout, _ = train(out)
    assert code == 0 and "resumed from" in stdout
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
class Payload:
    """Unpickling this runs `open(marker, "w")`: the file appears only if the pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.distributed
def test_planted_pickle_in_a_zero2_checkpoint_never_runs(tiny_assets, tmp_path):
    """ZeRO-2 on one CPU process. A pickle planted in place of DeepSpeed's model-state file is refused by the
    manifest; with the manifest forged to match, DeepSpeed's reader (weights_only=True here) refuses it.
    Neither runs it. The genuine file then resumes (the allow-list covers real DeepSpeed state)."""
    import torch

    out, marker = tmp_path / "run", tmp_path / "MARKER"
    cfg = dump_config(tiny_run(tiny_assets, out), tmp_path / "c.yaml")
    launch("configs/accelerate/zero2.yaml", cfg, "--stop-after", "2", processes=1)
    ck = out / "checkpoints" / "step-0000002"
    target = ck / "pytorch_model" / "mp_rank_00_model_states.pt"
    genuine = target.read_bytes()
    torch.save({"module": Payload(marker)}, target)

    refused = launch("configs/accelerate/zero2.yaml", cfg, processes=1, check=False)
    assert refused.returncode != 0 and not marker.exists()
    assert re.search(r"error: no checkpoint under \S+ can be resumed from \(step-0000002: pytorch_model/"
                     r"mp_rank_00_model_states.pt has \d+ bytes, the manifest says", refused.stderr), refused.stderr[-3000:]

    write_manifest(ck)  # an attacker who can write the folder can rewrite the manifest too
    refused = launch("configs/accelerate/zero2.yaml", cfg, processes=1, check=False)
    assert refused.returncode != 0 and not marker.exists()
    assert "mp_rank_00_model_states.pt: refused to load: it asks for io.open" in refused.stderr, refused.stderr[-3000:]

    target.write_bytes(genuine)
    write_manifest(ck)
    resumed = launch("configs/accelerate/zero2.yaml", cfg, "--stop-after", "1", processes=1)
    assert f"resumed from {ck} at step 2" in resumed.stdout and not marker.exists()
