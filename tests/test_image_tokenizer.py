"""Image tokenizers: bottleneck shapes and gradients, FSQ/VQ codes, save/load, input errors, exact resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import REPO
from image_helpers import pools, smooth_images, tiny

from mmgen.config import dump_config
from mmgen.tokenizer.bottleneck import FSQBottleneck, VQBottleneck
from mmgen.tokenizer.image import ImageTokenizer, load_image_tokenizer
from mmgen.tokenizer_study.image_data import CropSampler, Pool, pad_to_multiple
from mmgen.tokenizer_study.train import ensure_image_tokenizer, train_image_tokenizer


# ------------------------------------------------------------------------------------------ bottlenecks
@pytest.mark.parametrize("kind, channels", [("kl", 3), ("vq", 4), ("fsq", 3)])
def test_shapes_and_gradients(kind, channels):
    torch.manual_seed(0)
    tok = ImageTokenizer(tiny(kind)).train()
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    recon, out = tok(x)
    assert recon.shape == x.shape and out.z.shape == (2, channels, 4, 6)
    assert tok.latent_channels == channels and tok.downsample == 4 and tok.kind == kind
    loss = (recon - x).square().mean() + sum(out.losses.values())
    loss.backward()
    # straight-through estimators carry the reconstruction gradient through VQ and FSQ into the encoder
    assert tok.encoder.conv_in.weight.grad.abs().sum() > 0
    assert tok.decoder.conv_out.weight.grad.abs().sum() > 0
    tok.eval()
    z = tok.encode((x * 127.5 + 127.5).round().byte())
    assert z.dtype == torch.float32 and z.shape == (2, channels, 4, 6)
    assert tok.decode(z).shape == (2, 3, 16, 24) and tok.decode(z).abs().max() <= 1.0
    assert torch.equal(tok.encode(x), tok.encode(x))  # deterministic encode


def test_kl_samples_in_training_and_uses_the_mean_in_encode():
    torch.manual_seed(0)
    tok = ImageTokenizer(tiny("kl"))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    h = tok.encoder(x)
    mean = h[:, :3]
    assert torch.allclose(tok.eval().encode(x), mean, atol=1e-6)
    tok.train()
    z1, z2 = tok.bottleneck(h).z, tok.bottleneck(h).z
    assert not torch.equal(z1, z2) and tok.bottleneck(h).losses["kl"] > 0


def test_kl_rate_is_zero_at_the_prior_and_grows_with_a_sharper_posterior():
    kl = ImageTokenizer(tiny("kl")).bottleneck
    prior = torch.zeros(1, 6, 2, 2)  # mean 0, log variance 0: q = N(0, I)
    assert torch.allclose(kl.rate_bits(prior), torch.zeros(1, 2, 2))
    sharp = torch.cat([torch.ones(1, 3, 2, 2), torch.full((1, 3, 2, 2), -4.0)], dim=1)
    expected = 3 * 0.5 * (1 + math.exp(-4) - 1 + 4) / math.log(2)  # per position, 3 channels, in bits
    assert torch.allclose(kl.rate_bits(sharp), torch.full((1, 2, 2), expected), atol=1e-5)
    with pytest.raises(ValueError, match="kl"):
        ImageTokenizer(tiny("vq")).rate_bits(torch.zeros(1, 3, 8, 8))


def test_fsq_codes_cover_exactly_the_product_of_levels():
    fsq = FSQBottleneck([3, 4, 2])
    # a dense grid of inputs, far beyond the bounded range, hits every code and nothing else
    axis = torch.linspace(-6, 6, 121)
    grid = torch.cartesian_prod(axis, axis, axis).T.reshape(1, 3, -1, 1)  # [1, 3, 121^3, 1]
    ids = fsq.indices(fsq.encode(grid))
    assert set(ids.unique().tolist()) == set(range(24))
    big = FSQBottleneck([8, 8, 8, 5, 5, 5])
    codes = big.codes(torch.arange(64000))  # [64000, 6]
    assert big.codebook_size == 64000 and codes.unique(dim=0).shape[0] == 64000
    assert codes.abs().max() <= 1.0
    back = big.indices(codes.T.reshape(1, 6, -1, 1)).reshape(-1)
    assert torch.equal(back, torch.arange(64000))


def test_fsq_rounding_is_straight_through():
    fsq = FSQBottleneck([8, 5])
    h = torch.randn(1, 2, 3, 3, requires_grad=True)
    fsq(h).z.sum().backward()
    assert h.grad is not None and (h.grad != 0).all()


def test_vq_restarts_dead_codes_onto_batch_vectors():
    torch.manual_seed(0)
    vq = VQBottleneck(codebook_size=16, code_dim=4, decay=0.9, dead_code_steps=3).train()
    target = torch.nn.functional.normalize(torch.tensor([1.0, 2.0, 3.0, 4.0]), dim=0)
    h = target.view(1, 4, 1, 1).expand(2, 4, 4, 4).clone()  # every vector is the same direction
    for _ in range(4):
        out = vq(h)
    # all codes but the chosen one went unused for 3 steps and were moved onto (copies of) the batch vector
    assert (vq.codebook @ target > 0.999).all()
    assert out.indices.shape == (2, 4, 4) and float(out.losses["commitment"]) < 1e-6


def test_vq_usage_on_a_tiny_run_stays_high(tmp_path):
    from mmgen.tokenizer_study.metrics import code_usage

    recipe = tiny("vq", steps=60, codebook_size=32, dead_code_steps=10, ckpt_every=60, log_every=30)
    tok = train_image_tokenizer(recipe, tmp_path / "vq", pools=pools(128), progress=False)
    held_out = torch.from_numpy(np.stack(smooth_images(32, seed=7))).permute(0, 3, 1, 2)
    usage = code_usage(tok.indices(tok.encode(held_out)), 32)
    assert usage["usage"] >= 0.5, usage  # dead-code restarts keep most of the codebook alive
    assert usage["perplexity"] >= 8, usage


# ------------------------------------------------------------------------------------ save / load / errors
@pytest.mark.parametrize("kind", ["kl", "vq", "fsq"])
def test_save_load_round_trip_reconstructs_identically(kind, tmp_path):
    torch.manual_seed(0)
    tok = ImageTokenizer(tiny(kind))
    tok.train()(torch.rand(4, 3, 16, 16) * 2 - 1)  # one training forward moves VQ's EMA buffers
    tok.latent_mean.fill_(0.5)
    tok.latent_std.fill_(2.0)
    tok.eval().save_pretrained(tmp_path / "tok")
    again = load_image_tokenizer(tmp_path / "tok")
    x = (torch.rand(2, 3, 16, 16) * 255).byte()
    assert torch.equal(again.decode(again.encode(x)), tok.decode(tok.encode(x)))
    assert torch.equal(again.latent_std, tok.latent_std)
    z = tok.encode(x)
    assert torch.allclose(tok.denormalize(tok.normalize(z)), z, atol=1e-6)
    assert torch.allclose(tok.normalize(z), (z - 0.5) / 2.0)
    config = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert (config["kind"], config["downsample"], config["latent_channels"]) == (kind, 4, tok.latent_channels)


def test_state_dict_keys_are_pinned():
    keys = set(ImageTokenizer(tiny("vq")).state_dict())
    assert {
        "latent_mean",
        "latent_std",
        "bottleneck.ema_sum",
        "bottleneck.last_used",
        "bottleneck.step",
        "encoder.conv_in.weight",
        "decoder.conv_out.weight",
    } <= keys
    assert {k.split(".")[0] for k in keys} == {"encoder", "decoder", "bottleneck", "latent_mean", "latent_std"}


def test_wrong_sized_input_gets_a_clear_error():
    tok = ImageTokenizer(tiny("kl")).eval()
    with pytest.raises(ValueError, match=r"not a multiple of the downsampling factor 4.*\[N, 3, H, W\]"):
        tok.encode(torch.zeros(1, 3, 18, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\].*got \[1, 4, 16, 16\]"):
        tok.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        tok.encode(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match=r"latents of shape \[N, 3, H/4, W/4\]"):
        tok.decode(torch.zeros(1, 5, 4, 4))
    with pytest.raises(ValueError, match="no code indices"):
        tok.indices(torch.zeros(1, 3, 4, 4))


def test_missing_tokenizer_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train_tokenizer.py image --recipe .*nothing.yaml"):
        load_image_tokenizer(tmp_path / "nothing")


def test_corrupt_image_file_gets_a_clear_error(tmp_path):
    from PIL import Image

    from mmgen.data.documents import SampleError
    from mmgen.tokenizer_study.image_data import eval_images

    Image.fromarray(smooth_images(1)[0]).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(SampleError, match=r"b\.png.*cannot decode"):
        list(eval_images(str(tmp_path)))


# ----------------------------------------------------------------------------------------- training
def test_crop_sampler_is_deterministic_and_keeps_pixels_per_step():
    big = Pool.of("big", smooth_images(4, size=48), 32, 4)
    small = Pool.of("small", smooth_images(4, size=16), 32, 4)  # smaller than the crop: cropped at 16
    assert (big.crop, small.crop) == (32, 16)
    s = CropSampler([big, small], [1.0, 1.0], crop=32, batch=2, seed=3)
    assert s.batch_size(small) == 8
    for step in range(6):
        name, x = s(step)
        assert torch.equal(x, s(step)[1]) and x.dtype == torch.uint8
        assert x.shape == ((2, 3, 32, 32) if name == "big" else (8, 3, 16, 16))


def test_resume_equals_an_uninterrupted_run(tmp_path):
    recipe = tiny("vq", steps=6, ckpt_every=2)
    full = train_image_tokenizer(recipe, tmp_path / "full", resume="none", pools=pools(), progress=False)
    train_image_tokenizer(recipe, tmp_path / "split", resume="none", pools=pools(), progress=False, stop_at=4)
    assert not (tmp_path / "split" / "model.safetensors").exists()
    resumed = train_image_tokenizer(recipe, tmp_path / "split", resume="auto", pools=pools(), progress=False)
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    with pytest.raises(ValueError, match="recipe changed.*width"):
        train_image_tokenizer(tiny("vq", steps=8, width=16), tmp_path / "split", pools=pools(), progress=False)


def test_ensure_trains_from_a_recipe_once_and_writes_statistics(tmp_path, monkeypatch):
    import mmgen.tokenizer_study.train as train_mod

    recipe_path = dump_config(tiny("kl", steps=3), tmp_path / "tiny_kl.yaml")
    calls = []
    real = train_mod.train_image_tokenizer

    def fake_pools(recipe, out, **kw):
        calls.append(out)
        return real(recipe, out, pools=pools(16), progress=False, **kw)

    monkeypatch.setattr(train_mod, "train_image_tokenizer", fake_pools)
    tok = ensure_image_tokenizer(recipe_path)
    again = ensure_image_tokenizer(recipe_path)
    assert len(calls) == 1 and (tmp_path / "tiny_kl" / "model.safetensors").is_file()
    assert (tmp_path / "tiny_kl" / "recipe.yaml").is_file() and (tmp_path / "tiny_kl" / "summary.json").is_file()
    assert torch.equal(tok.latent_std, again.latent_std) and (tok.latent_std != 1.0).all()
    assert torch.equal(ensure_image_tokenizer(tmp_path / "tiny_kl").latent_mean, tok.latent_mean)


def test_pad_to_multiple():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).view(2, 3, 5, 7)
    y = pad_to_multiple(x, 4)
    assert y.shape == (2, 3, 8, 8) and torch.equal(y[..., :5, :7], x)


# -------------------------------------------------------------------------------- committed artifact
def test_shapes_tokenizer_reconstructs_held_out_shapes():
    """The committed default tokenizer: f = 4, 4 channels, faithful on split='test' shapes images."""
    from mmgen.config import ShapesConfig
    from mmgen.data.shapes import ShapesGenerator
    from mmgen.tokenizer_study.metrics import psnr_per_image, to_unit

    folder = REPO / "tokenizers" / "image" / "shapes_kl"
    assert (folder / "model.safetensors").is_file(), "commit the trained shapes_kl artifact"
    assert (folder / "model.safetensors").stat().st_size < 2_000_000
    tok = load_image_tokenizer(folder)
    assert (tok.kind, tok.downsample, tok.latent_channels) == ("kl", 4, 4)
    gen = ShapesGenerator(ShapesConfig(split="test"))
    x = torch.from_numpy(np.stack([gen.pair(i)[0] for i in range(64)])).permute(0, 3, 1, 2)
    z = tok.encode(x)
    assert z.shape == (64, 4, 8, 8)
    psnr = psnr_per_image(to_unit(tok.decode(z)), to_unit(x))
    assert psnr.mean() > 30.0 and psnr.min() > 24.0, psnr
    zn = tok.normalize(z)
    assert abs(float(zn.mean())) < 0.5 and 0.5 < float(zn.std()) < 2.0
    assert math.isfinite(float(tok.latent_std.min())) and float(tok.latent_std.min()) > 0


def test_train_script_on_the_shapes_recipe(tmp_path, capsys):
    """The real entry point and data path (shapes needs no external data), two steps."""
    import subprocess
    import sys

    out = tmp_path / "shapes"
    cmd = [
        sys.executable,
        "scripts/train_tokenizer.py",
        "image",
        "--recipe",
        "tokenizers/image/shapes_kl.yaml",
        "--out",
        str(out),
        "steps=2",
        "images_per_source=16",
        "val_images=4",
        "stats_batches=1",
        "width=4",
    ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "validation PSNR: shapes" in res.stdout
    tok = load_image_tokenizer(out)
    assert (tok.kind, tok.downsample, tok.latent_channels) == ("kl", 4, 4)
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    bad = subprocess.run(cmd[:-1] + ["widht=4"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "did you mean 'width'" in bad.stderr
