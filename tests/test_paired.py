"""The paired comparison of two tokenizers: Student-t quantiles against tabulated values, the interval against a
hand computation, and the errors for mismatched image sets."""

from __future__ import annotations

import json
import math

import pytest
from helpers import run_script

from mmgen.tokenizer_study.paired import paired_difference, t_quantile


@pytest.mark.parametrize("dof, exact", [(5, 2.570582), (10, 2.228139), (23, 2.068658), (30, 2.042272), (99, 1.984217)])
def test_t_quantile_matches_the_table(dof, exact):
    assert t_quantile(0.975, dof) == pytest.approx(exact, abs=3e-4)


def test_interval_of_known_differences():
    names = [f"im{i}.png" for i in range(5)]
    a = [{"image": n, "psnr": 30.0 + d} for n, d in zip(names, (1.0, 2.0, 3.0, 4.0, 5.0))]
    b = [{"image": n, "psnr": 30.0} for n in reversed(names)]  # another order: rows are matched by name
    got = paired_difference(a, b)
    sd = math.sqrt(2.5)  # sample sd of 1..5
    half = 2.776445 * sd / math.sqrt(5)  # t_{0.975, 4}
    assert got["n"] == 5 and got["wins"] == 5
    assert got["mean"] == pytest.approx(3.0) and got["sd"] == pytest.approx(sd)
    assert got["lo"] == pytest.approx(3.0 - half, abs=2e-3) and got["hi"] == pytest.approx(3.0 + half, abs=2e-3)
    flipped = paired_difference(b, a)
    assert flipped["mean"] == pytest.approx(-3.0) and flipped["wins"] == 0


def test_different_image_sets_are_refused():
    a = [{"image": "x.png", "psnr": 1.0}, {"image": "y.png", "psnr": 2.0}]
    b = [{"image": "x.png", "psnr": 1.0}, {"image": "z.png", "psnr": 2.0}]
    with pytest.raises(ValueError, match="evaluated on different images"):
        paired_difference(a, b)
    with pytest.raises(ValueError, match="at least 2 images"):
        paired_difference(a[:1], a[:1])


def test_command_line_reads_both_result_layouts(tmp_path, capsys):
    """eval_tokenizer.py's layout (per_image at the top) and eval_references.py's (sets -> image set)."""
    names = [f"im{i}.png" for i in range(4)]

    def rows(base: float) -> list[dict]:
        return [{"image": n, "psnr": base + i, "ssim": 0.5} for i, n in enumerate(names)]

    (tmp_path / "tok.json").write_text(json.dumps({"per_image": {"kl": rows(30.0), "fsq": rows(27.0)}}))
    (tmp_path / "ref.json").write_text(json.dumps({"sets": {"kodak": {"per_image": {"pca": rows(29.0)}}}}))
    files = [str(tmp_path / "tok.json"), str(tmp_path / "ref.json")]
    out = tmp_path / "paired"
    assert run_script("paired_tokenizers", *files, "--pair", "kl:fsq", "--pair", "kl:pca", "--out", str(out)) == 0
    got = json.loads(out.with_suffix(".json").read_text())["pairs"]
    assert [(p["a"], p["b"], p["metric"], p["mean"]) for p in got] == [
        ("kl", "fsq", "psnr", 3.0),
        ("kl", "fsq", "ssim", 0.0),
        ("kl", "pca", "psnr", 1.0),
        ("kl", "pca", "ssim", 0.0),
    ]
    assert "| kl | fsq | psnr | +3.000 |" in capsys.readouterr().out
    assert run_script("paired_tokenizers", *files, "--pair", "kl:vq") == 2
    assert "no per-image rows for ['vq']" in capsys.readouterr().err
    assert run_script("paired_tokenizers", *files, "--pair", "kl:pca", "--set", "flickr8k-test") == 2
    assert "no image set 'flickr8k-test'" in capsys.readouterr().err
