"""scripts/gpu_check.sh --cpu: every step of the GPU check dry-runs on the CPU at tiny sizes, writes its JSON and
prints the summary table last (about a minute on a 2-core CPU)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import REPO


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=str(REPO / ".venv" / "bin" / "python"))
    if not (REPO / ".venv" / "bin" / "python").exists():
        env.pop("PYTHON")
    res = subprocess.run(
        [str(REPO / "scripts" / "gpu_check.sh"), "--cpu", "--out", str(out), "--run-dir", str(tmp_path / "run")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rep = json.loads(out.read_text())
    steps = rep["steps"]
    assert rep["cpu"] and set(steps) == {"tests", "bench", "train", "sample"}
    assert all(s["ok"] for s in steps.values())
    assert steps["tests"]["counts"].get("passed") == 4 and not steps["tests"]["counts"].get("failed")
    row = steps["bench"]["results"][0]
    assert row["preset"] == "tiny" and row["documents_per_row"] > 2
    assert all(row[v]["tokens_per_s"] > 0 for v in ("mot-flex", "mot-sdpa", "dense-flex"))
    assert row["mot-flex"]["mfu"] is None  # no peak on a CPU
    tr = steps["train"]
    assert tr["steps_done"] == tr["steps_planned"] == 6 and len(tr["loss_curve"]) >= 2 and tr["release"]
    assert tr["last_sheet"] == str(tmp_path / "gpu-samples.png") and (tmp_path / "gpu-samples.png").stat().st_size > 0
    assert steps["sample"]["model"] == tr["release"]  # step 4 samples the model step 3 trained
    assert [r["steps"] for r in steps["sample"]["images_per_s"]] == [1, 4]
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == f"-> {out}" and any(ln.startswith("GPU check on CPU") for ln in lines[-12:])


def test_profile_step_on_cpu(tmp_path, capsys):
    """scripts/profile_step.py on the CPU: variant throughput, then the profiled aten ops, grouped (the shares sum
    to one, the matmuls are found, the top list is sorted) and an unknown variant is refused by name."""
    from helpers import run_script

    out = tmp_path / "prof.json"
    args = ("--preset", "tiny", "--rows", "1", "--seq-len", "128", "--steps", "1", "--warmup", "1")
    assert run_script("profile_step", *args, "--variants", "mot-flex,dense-sdpa", "--out", str(out)) == 0
    rep = json.loads(out.read_text())
    assert set(rep["variants"]) == {"mot-flex", "dense-sdpa"} and rep["variants"]["mot-flex"]["mfu"] is None
    prof = rep["profile"]
    assert prof["device_busy_fraction"] is None and prof["steps"] == 2
    assert abs(sum(prof["category_share"].values()) - 1) < 1e-3 and prof["category_share"]["matmul"] > 0
    top = [r["ms_per_step"] for r in prof["top"]]
    assert top == sorted(top, reverse=True) and "matmul" in {r["category"] for r in prof["top"]}
    assert run_script("profile_step", *args, "--variants", "mot-flux", "--out", str(out)) == 2
    assert "unknown variant(s) mot-flux" in capsys.readouterr().err
