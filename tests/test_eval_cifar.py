"""The CIFAR-10 evaluation: the committed judge reproduces its stated accuracy, the script runs end to end on
a released model and records what it measured, and the noise seed is the only source of sample variation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, real_data, tiny_release
from helpers import run_script

from mmgen.eval import cifar as ev
from mmgen.sampling.pipeline import MMGenPipeline
from mmgen.tokenizer_study.feature_net import load_feature_net


@pytest.fixture(scope="module")
def release(tiny_assets, tmp_path_factory):
    return tiny_release(tiny_assets, tmp_path_factory.mktemp("cifar_release") / "release")


def test_judge_reproduces_its_stated_accuracy():
    real_data("cifar10")
    stated = json.loads((ev.JUDGE / "config.json").read_text())["test_accuracy"]
    imgs, labels = ev.real_test(1000)
    pred, feats = ev.judge(load_feature_net(ev.JUDGE), imgs)
    # 1000 images: the standard error of an accuracy near 0.8 is 0.013, so 0.04 is three of them
    assert abs(float((pred == labels).mean()) - stated) < 0.04
    assert feats.shape[0] == 1000 and np.isfinite(feats).all()


def test_generated_images_depend_on_the_seed_only(release):
    pipe = MMGenPipeline.from_pretrained(release)
    a, labels, _ = ev.generate(pipe, 2, 1, batch=10, seed=0)
    b, _, _ = ev.generate(pipe, 2, 1, batch=10, seed=0)
    c, _, _ = ev.generate(pipe, 2, 1, batch=10, seed=1)
    assert a.shape == (20, 32, 32, 3) and a.dtype == np.uint8
    assert labels.tolist() == [k for k in range(10) for _ in range(2)]  # prompt i names class labels[i]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_eval_script_end_to_end(release, tmp_path):
    real_data("cifar10")
    out = tmp_path / "eval_tiny.json"
    argv = ["--model", str(release), "--imm-steps", "1", "2", "--per-class", "2", "--real", "200", "--captions", "4"]
    code = run_script("eval_cifar", *argv, "--batch", "10", "--seed", "3", "--guidance", "2", "--out", str(out))
    assert code == 0
    report = json.loads(out.read_text())
    assert report["seed"] == 3 and report["guidance"] == 2 and report["per_class"] == 2
    rows = report["models"][str(release)]["by_steps"]
    assert report["models"][str(release)]["objective"] == "imm" and list(rows) == ["1", "2"]
    for n, row in rows.items():
        assert row["nfe"] == int(n) and 0 <= row["class_accuracy"] <= 1 and row["frechet_distance"] > 0
        assert (tmp_path / "eval_tiny" / f"imm-N{n}.png").is_file()
    assert 0 <= report["models"][str(release)]["caption_accuracy"] <= 1
    assert len(report["real_floor_fd"]) == 3  # three disjoint draws of 20 other real images
    assert (tmp_path / "quality_vs_steps_tiny.png").is_file()
    assert ev.figure_path(REPO / "results" / "cifar10" / "eval.json").name == "quality_vs_steps.png"
