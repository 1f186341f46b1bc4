"""Tiny end-to-end versions of both inference-first studies: the direction of each effect, with margins that a
broken objective, sampler or metric would miss; plus the analytic facts the studies rest on."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmgen.config import ImmConfig
from mmgen.experiments.fit import FitConfig
from mmgen.experiments.metrics import energy_distance, sliced_wasserstein
from mmgen.experiments.poker import DiscreteStudyConfig, run_discrete
from mmgen.experiments.targets2d import checkerboard, on_checkerboard, ring8
from mmgen.experiments.toy2d import ContinuousStudyConfig, run_continuous


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------- analytic facts
def test_metrics_against_closed_forms():
    g = torch.Generator().manual_seed(0)
    ring = ring8(4000, g)
    # a point mass at the mean: 2 E||X|| - E||X - X'|| = 2 * 1 - 1.257 ~ 0.74 (radius 1, 8 modes)
    assert abs(energy_distance(torch.zeros(4000, 2), ring) - 0.74) < 0.02
    assert energy_distance(ring, ring) == pytest.approx(0.0, abs=1e-12)
    other = ring8(4000, g)
    assert energy_distance(ring, other) < 0.005  # the noise floor
    assert energy_distance(ring, other + torch.tensor([0.3, 0.0])) > 0.05
    # shift by d: every projection u moves by u.d, so SW2 = |d| / sqrt(2) in 2-D
    d = torch.tensor([0.6, -0.8])
    assert sliced_wasserstein(ring, ring + d, projections=2000) == pytest.approx(1.0 / math.sqrt(2), rel=0.03)
    with pytest.raises(ValueError, match="energy_distance"):
        energy_distance(torch.zeros(3), ring)


def test_checkerboard_product_of_marginals_is_half_off_support():
    x = checkerboard(20000, torch.Generator().manual_seed(1))
    assert bool(on_checkerboard(x).all())
    shuffled = torch.stack([x[:, 0], x[torch.randperm(len(x), generator=torch.Generator().manual_seed(2)), 1]], 1)
    assert abs(float(on_checkerboard(shuffled).float().mean()) - 0.5) < 0.015


def test_bad_study_configs_are_rejected():
    with pytest.raises(ValueError, match="unknown 2-D target"):
        ContinuousStudyConfig(targets=["spiral"])
    with pytest.raises(ValueError, match="multiple of imm.particles"):
        ContinuousStudyConfig(batch=30)
    with pytest.raises(ValueError, match="tuple data set"):
        DiscreteStudyConfig(tasks=["chess"])


# ---------------------------------------------------------------------------------------- tiny studies
def test_continuous_study_tiny():
    cfg = ContinuousStudyConfig(
        targets=["ring8"],
        steps=[1, 8],
        fit=FitConfig(steps=400, warmup=50),
        batch=256,
        imm=ImmConfig(warm_start_steps=200, boundary_fraction=0.25),
        eval_samples=1000,
        floor_repeats=3,
        bayes_points=2000,
        noise_seeds=2,
    )
    res, samples = run_continuous(cfg)
    r = res["targets"]["ring8"]
    ed = {k: {int(n): v["energy"] for n, v in m["per_steps"].items()} for k, m in r["models"].items()}
    assert r["models"]["fm"]["params"] == r["models"]["imm"]["params"]
    assert ed["bayes"][1] == pytest.approx(0.74, abs=0.04)  # every sample is the mean
    assert ed["fm"][1] > 0.1 and ed["imm"][1] < ed["fm"][1] / 3, ed
    assert ed["fm"][8] < ed["fm"][1] / 5 and ed["bayes"][8] < ed["bayes"][1] / 20, ed  # many steps recover
    assert r["floor"]["energy"]["mean"] < min(ed["imm"][1], ed["fm"][8])
    assert samples["ring8"]["imm"][1].shape == (1000, 2)
    spread = [v["energy_sd"] for m in r["models"].values() for v in m["per_steps"].values()]
    assert all(sd >= 0 for sd in spread) and any(sd > 0 for sd in spread)  # two noise draws differ


def test_discrete_study_tiny():
    cfg = DiscreteStudyConfig(
        tasks=["poker"],
        batch=128,
        samples=2000,
        grids=["cosine"],
        fit=FitConfig(steps=250, lr=3e-3, warmup=25, ema_decay=0.9),
    )
    task = run_discrete(cfg)["tasks"]["poker"]
    ar, md = task["ar"], task["md"]
    rows = {(r["unmask"], r["steps"]): r for r in md["rows"]}
    assert ar["valid_exact"] > 0.95 and ar["valid_sampled"] > 0.93, ar
    one = rows[("random", 1)]
    assert abs(one["valid_exact"] - 10 / 36) < 0.04 and abs(one["kl_exact"] - 1.3297) < 0.15, one
    assert one["valid_ideal"] == pytest.approx(10 / 36)
    assert abs(one["valid_sampled"] - one["valid_exact"]) < 0.05
    assert rows[("random", 2)]["valid_exact"] > one["valid_exact"] + 0.2  # validity rises with L
    assert rows[("count", 2)]["valid_exact"] > 0.9  # one word per step: the joint is back
    assert ar["kl_exact"] < 0.1 < one["kl_exact"]


def test_script_writes_json_and_figures(tmp_path, capsys):
    from helpers import run_script

    argv = ["discrete", "tasks=[poker,perm3]", "fit.steps=20", "fit.warmup=5", "samples=100", "--out", str(tmp_path)]
    assert run_script("inference_first", *argv) == 0
    res = json.loads((tmp_path / "discrete.json").read_text())
    assert set(res["tasks"]) == {"poker", "perm3"} and res["machine"]["torch_threads"] == 1
    assert (tmp_path / "discrete_validity_vs_steps.png").stat().st_size > 10_000
    assert (tmp_path / "discrete_poker.png").stat().st_size > 10_000
    capsys.readouterr()
    code = run_script("inference_first", "discrete", "fit.stepz=3", "--out", str(tmp_path))  # the error boundary
    assert code == 2 and "error: command-line override 'fit.stepz=3': unknown key" in capsys.readouterr().err
