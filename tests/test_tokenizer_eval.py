"""Tokenizer evaluation: per-image metrics, Frechet distance, k-bit latents, the eval script end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import real_data
from helpers import run_script
from image_helpers import smooth_images, tiny

from mmgen.tokenizer.image import ImageTokenizer
from mmgen.tokenizer_study.kbit import KBitQuantizer
from mmgen.tokenizer_study.metrics import frechet_distance, psnr_per_image, ssim_per_image, to_unit


def test_psnr_is_per_image_then_averaged():
    target = torch.zeros(2, 3, 8, 8)
    pred = target.clone()
    pred[0] += 0.1  # MSE 1e-2 -> 20 dB
    pred[1] += 0.01  # MSE 1e-4 -> 40 dB
    per = psnr_per_image(pred, target)
    assert torch.allclose(per, torch.tensor([20.0, 40.0]), atol=1e-4)
    batch_level = 10 * torch.log10(1 / (pred - target).square().mean())  # the bug: log of the pooled MSE
    assert abs(float(per.mean()) - 30.0) < 1e-4 and float(batch_level) < 24.0


def test_ssim_uses_the_range_of_unit_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    assert torch.allclose(ssim_per_image(x, x), torch.ones(2))
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    s = ssim_per_image(noisy, x)
    assert s.shape == (2,) and (s < 0.95).all() and (s > 0.3).all()
    # to_unit maps uint8 and [-1, 1] images to the same [0, 1] 8-bit levels
    u8 = (x * 255).round().byte()
    assert torch.equal(to_unit(u8), to_unit(u8.float() / 127.5 - 1))


def test_frechet_distance():
    g = np.random.default_rng(0)
    a = g.normal(size=(4000, 8))
    assert abs(frechet_distance(a, a)) < 1e-6
    shifted = a + np.array([3.0] + [0.0] * 7)
    assert frechet_distance(a, shifted) == pytest.approx(9.0, rel=1e-6)  # same covariance: ||mu_a - mu_b||^2
    assert frechet_distance(a, 2 * a) > frechet_distance(a, 1.1 * a) > 0
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance(a, a[:, :4])


def test_kbit_quantizer_levels_and_error_fall_with_bits():
    z = torch.randn(64, 3, 4, 4) * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1, 1)
    errors = []
    for k in (1, 2, 4, 6):
        q = KBitQuantizer.fit(z, k)
        zq = q(z)
        assert zq.shape == z.shape and q.bits == k
        for c in range(3):
            assert zq[:, c].unique().numel() <= 2**k
        codes = q.codes(z)
        assert codes.min() >= 0 and codes.max() < 2**k
        errors.append(float((zq - z).square().mean()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.01 * errors[0]
    with pytest.raises(ValueError, match="bits"):
        KBitQuantizer.fit(z, 0)


def test_eval_script_writes_json_markdown_and_figure(tmp_path, capsys):
    from PIL import Image

    torch.manual_seed(0)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, im in enumerate(smooth_images(2, size=40)):
        Image.fromarray(im[:36]).save(imgs / f"im{i}.png")  # 36x40: padded to a multiple of f, cropped back
    for kind in ("kl", "fsq"):
        ImageTokenizer(tiny(kind)).eval().save_pretrained(tmp_path / kind)
    out = tmp_path / "out"
    argv = [str(tmp_path / "kl"), str(tmp_path / "fsq"), "--images", str(imgs), "--out", str(out), "--no-fd"]
    code = run_script("eval_tokenizer", *argv, "--figure", "im1.png")
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert set(rows) == {"kl", "fsq"} and rows["kl"]["images"] == 2
    assert len(data["per_image"]["fsq"]) == 2 and all(np.isfinite(r["psnr"]) for r in data["per_image"]["kl"])
    assert rows["fsq"]["code_codebook_size"] == 60 and 1 <= rows["fsq"]["code_codes_used"] <= 60
    assert rows["kl"]["compression"] == 8  # 4x4 pixels x 3 x 8 = 384 bits in, 3 bfloat16 channels = 48 out
    assert "| kl |" in (out / "results.md").read_text()
    assert Image.open(out / "crops.png").size[0] > 3 * 36  # original + two tokenizers side by side

    (imgs / "broken.png").write_bytes(b"not an image")
    code = run_script("eval_tokenizer", str(tmp_path / "kl"), "--images", str(imgs), "--no-fd", "--out", str(out))
    assert code == 2 and "error: " in (err := capsys.readouterr().err) and "broken.png: cannot decode" in err


def test_feature_net_trains_and_gives_tile_features(tmp_path):
    real_data("cifar10/cifar10_train_jpg.zip")
    from mmgen.tokenizer_study.feature_net import load_feature_net, tile_features, train_feature_net

    train_feature_net(tmp_path / "fn", epochs=1, width=4, batch=32, limit=256, progress=False)
    net = load_feature_net(tmp_path / "fn")
    feats = tile_features(net, torch.rand(2, 3, 64, 96))
    assert feats.shape == (2 * 2 * 3, 16) and np.isfinite(feats).all()
    info = json.loads((tmp_path / "fn" / "config.json").read_text())
    assert 0.0 <= info["test_accuracy"] <= 1.0 and "not comparable" in info["note"]
    with pytest.raises(FileNotFoundError, match="train-feature-net"):
        load_feature_net(tmp_path / "missing")
