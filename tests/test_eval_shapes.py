"""scripts/eval_shapes.py over several noise seeds: per-seed rows, their mean, and the release card's table."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
from helpers import run_script

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO / "releases" / "shapes"


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    if not (RELEASE / "model.safetensors").is_file():
        pytest.skip("releases/shapes is not in this checkout")
    out = tmp_path_factory.mktemp("eval")
    argv = ["--model", str(RELEASE), "--steps", "1", "--n", "6", "--n-unseen", "3", "--batch", "6", "--threads", "1"]
    assert run_script("eval_shapes", *argv, "--seed", "0", "1", "--out", str(out / "both.json")) == 0
    assert run_script("eval_shapes", *argv, "--seed", "1", "--out", str(out / "one.json")) == 0
    return json.loads((out / "both.json").read_text()), json.loads((out / "one.json").read_text()), out


def test_each_seed_is_sampled_and_the_mean_is_over_the_seeds(two_seeds):
    both, one, out = two_seeds
    entry = both["models"][str(RELEASE)]
    rows = entry["results"]
    assert [(r["prompts"], r["seed"]) for r in rows] == [("seen", 0), ("unseen", 0), ("seen", 1), ("unseen", 1)]
    alone = one["models"][str(RELEASE)]["results"]  # seed 1 on its own draws the same images
    for a, b in zip(alone, rows[2:]):
        assert {k: v for k, v in a.items() if "second" not in k} == {k: v for k, v in b.items() if "second" not in k}
    means = entry["mean_over_seeds"]
    assert [m["prompts"] for m in means] == ["seen", "unseen"] and all(m["seeds"] == [0, 1] for m in means)
    for m in means:
        per = [r for r in rows if r["prompts"] == m["prompts"]]
        for key in ("correct", "color", "shape", "size"):
            values = [r[key] for r in per]
            assert m[f"{key}_per_seed"] == values
            assert m[key] == pytest.approx(np.mean(values)) and m[f"{key}_sd"] == pytest.approx(np.std(values, ddof=1))
    sheets = sorted(p.name for p in (out / "both").glob("shapes-seen-*"))
    assert len(sheets) == 2 and sheets[0] == sheets[1].replace(".png", "-seed1.png")  # seed 0 keeps the plain name


def test_card_table_shows_the_mean_and_each_seed(two_seeds):
    both, one, _ = two_seeds
    table = runpy.run_path(str(REPO / "scripts" / "publish_release.py"))["_table"]
    text = table(both)
    m = both["models"][str(RELEASE)]["mean_over_seeds"][0]
    assert "mean over noise seeds 0, 1" in text
    assert f"**{m['correct']:.1%}** ({m['correct_per_seed'][0]:.1%} / {m['correct_per_seed'][1]:.1%})" in text
    assert "ms / image" in table(one) and "mean over noise seeds" not in table(one)  # one seed: the plain table


def test_card_names_a_teacher_that_is_the_release_it_replaces(two_seeds, tmp_path, monkeypatch):
    """A stage distilled from (and started at) the published release: once published, that folder holds the new
    weights, so the card must not name it as if it were still the teacher."""
    both, _, _ = two_seeds
    card = runpy.run_path(str(REPO / "scripts" / "publish_release.py"))["model_card"]
    monkeypatch.chdir(tmp_path)
    run, folder = tmp_path / "run", tmp_path / "releases" / "shapes.tmp"
    run.mkdir()
    folder.mkdir(parents=True)
    (folder / "config.json").write_text((RELEASE / "config.json").read_text())
    config = {
        "data": {
            "rows": 8,
            "seq_len": 256,
            "shapes": {"seed": 0, "p_caption_image": 0.6, "p_image_caption": 0.15, "p_interleaved": 0.25},
        },
        "train": {"lr": 3e-4, "schedule": "cosine", "ema_decay": 0.999, "seed": 0, "init_from": "releases/shapes"},
        "objective": {"distill": {"teacher": "releases/shapes", "steps": 8, "guidance": 3.0}},
    }
    (run / "config.yaml").write_text(json.dumps(config))  # YAML is a superset of JSON
    last = {"params_total": 2.2e6, "step": 10, "tokens_seen": 20480, "text_loss": 0.6, "image_loss": 0.01}
    (run / "metrics.jsonl").write_text(json.dumps(last) + "\n")
    args = (run, folder, Path("releases/shapes"), both, "1 s", "make release", False, {"steps": 4})
    text = card(*args)
    assert "of a frozen teacher, the previous release at `releases/shapes` (the weights this release" in text
    assert "initialised from the EMA weights of the previous release at `releases/shapes`" in text
    config["objective"]["distill"]["teacher"] = config["train"]["init_from"] = "runs/stage4/release"
    (run / "config.yaml").write_text(json.dumps(config))
    text = card(*args)
    assert "of a frozen teacher, `runs/stage4/release`, from" in text and "previous release" not in text
