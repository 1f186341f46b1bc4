"""Trunk-free references (principal components, k-means of f x f patches) on tiny synthetic images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import run_script
from PIL import Image

from mmgen.errors import ConfigError
from mmgen.tokenizer_study.patches import from_patches, nearest, patch_grid
from mmgen.tokenizer_study.references import KMeansReference, PCAReference, load_reference


def smooth(n: int, h: int = 32, w: int = 48, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 3, h, w]: low-frequency colour fields plus a little noise (patches of real-image-like spectra)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, h // 8, w // 8, generator=g)
    x = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.randn(n, 3, h, w, generator=g)
    return (x.clamp(0, 1) * 255).round().byte()


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).square().mean())


def test_patches_round_trip_and_reject_bad_sizes():
    x = torch.randn(2, 3, 16, 24)
    p = patch_grid(x, 8)
    assert p.shape == (2, 2, 3, 192)
    assert torch.equal(p[0, 1, 2], x[0, :, 8:16, 16:24].reshape(-1))  # channel-major, then rows, then columns
    assert torch.equal(from_patches(p, 8), x)
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        patch_grid(x[..., :20], 8)


def test_pca_reconstructs_a_rank_c_input_exactly():
    f, c, d = 2, 3, 12
    g = torch.Generator().manual_seed(1)
    mean, basis = torch.randn(d, generator=g) * 0.1, torch.randn(c, d, generator=g)
    z = torch.randn(5, 6, 8, c, generator=g)
    x = from_patches(z @ basis + mean, f)  # [5, 3, 12, 16]: every patch lies in a c-dimensional affine subspace
    ref = PCAReference.fit([x], f, c)
    torch.testing.assert_close(ref.reconstruct(x), x, atol=1e-5, rtol=0)
    assert ref.encode(x).shape == (5, c, 6, 8)
    assert ref.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert mse(PCAReference.fit([x], f, c - 1).reconstruct(x), x) > 1e-3  # one fewer component is not enough


def test_pca_error_falls_with_channels_and_components_nest():
    train, test = smooth(6, seed=0), smooth(3, seed=1)
    full = PCAReference.fit(list(train), 4, 48)  # all 3 * 4 * 4 components: a rotation, so lossless
    xt = test.float() / 127.5 - 1
    errs = [mse(full.truncate(c).reconstruct(test), xt) for c in (1, 2, 4, 8, 16, 48)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-10
    torch.testing.assert_close(full.truncate(8).components, PCAReference.fit(list(train), 4, 8).components)
    with pytest.raises(ValueError, match="PCA channels must be in 1..48"):
        PCAReference.fit(list(train), 4, 49)


def test_kmeans_distortion_falls_with_codebook_size():
    train, test = smooth(6, seed=0), smooth(3, seed=1)
    xt = test.float() / 127.5 - 1
    fits = [KMeansReference.fit(train, 4, k, iters=10, seed=0) for k in (1, 4, 16, 64)]
    train_mse = [r.fit_info["mse_history"][-1] for r in fits]
    test_mse = [mse(r.reconstruct(test), xt) for r in fits]
    assert all(a > b for a, b in zip(train_mse, train_mse[1:])), train_mse
    assert all(a > b for a, b in zip(test_mse, test_mse[1:])), test_mse
    # K = 1 is the mean patch; Lloyd never increases the training distortion
    x = (patch_grid(train, 4).reshape(-1, 48).float() / 127.5) - 1
    torch.testing.assert_close(fits[0].codebook[0], x.mean(0), atol=1e-5, rtol=0)
    for r in fits:
        h = r.fit_info["mse_history"]
        assert all(a >= b - 1e-7 for a, b in zip(h, h[1:])), h


def test_kmeans_codes_shapes_and_bits():
    x = smooth(2, 32, 48)
    km = KMeansReference.fit(x, 8, 4, iters=3, seed=0)
    ids = km.encode(x)
    assert ids.shape == (2, 1, 4, 6) and ids.dtype == torch.long and 0 <= ids.min() and ids.max() < 4
    assert km.decode(ids).shape == (2, 3, 32, 48)
    ids_ref, d2 = nearest((patch_grid(x, 8).reshape(-1, 192).float() / 127.5) - 1, km.codebook)
    assert torch.equal(ids.flatten(), ids_ref) and (d2 >= 0).all()
    with pytest.raises(ValueError, match="code ids must lie in 0..3"):
        km.decode(ids + 4)
    b = km.bits("f8-kmeans4")
    assert (b.bits_out, b.bits_in, b.compression) == (2.0, 1536, 768.0)
    km256 = KMeansReference(8, torch.zeros(256, 192))
    assert km256.bits("x").bits_out == 8 and km256.bits("x").compression == 192
    pca = PCAReference.fit([x], 8, 4)
    assert pca.encode(x).shape == (2, 4, 4, 6) and pca.decode(pca.encode(x)).shape == (2, 3, 32, 48)
    assert (pca.bits("p").bits_out, pca.bits("p").compression) == (64.0, 24.0)  # 4 bfloat16 channels per 8x8
    assert PCAReference.fit([smooth(2, 64, 64)], 16, 16).bits("p").compression == 24.0  # 6144 / 256


def test_fit_is_deterministic_for_a_seed_and_saves(tmp_path):
    x = smooth(4)
    for init in ("random", "kmeans++"):
        a = KMeansReference.fit(x, 4, 16, iters=5, seed=3, max_patches=200, init=init)
        b = KMeansReference.fit(x, 4, 16, iters=5, seed=3, max_patches=200, init=init)
        c = KMeansReference.fit(x, 4, 16, iters=5, seed=4, max_patches=200, init=init)
        assert torch.equal(a.codebook, b.codebook) and not torch.equal(a.codebook, c.codebook)
        assert a.fit_info["patches"] == 200 and a.fit_info["patches_available"] == 4 * 8 * 12
    back = load_reference(a.save(tmp_path / "km"))
    assert isinstance(back, KMeansReference) and torch.equal(back.encode(x), a.encode(x))
    pca = PCAReference.fit(list(x), 4, 6)
    back = load_reference(pca.save(tmp_path / "pca"))
    assert isinstance(back, PCAReference) and torch.equal(back.encode(x), pca.encode(x))
    assert json.loads((tmp_path / "pca" / "config.json").read_text())["channels"] == 6
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_reference(tmp_path / "missing")
    with pytest.raises(ValueError, match="needs at least K training patches"):
        KMeansReference.fit(x, 4, 16, max_patches=10)


def _write_pngs(folder, images: torch.Tensor) -> None:
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f"im{i}.png")


def test_eval_references_script_end_to_end(tmp_path, monkeypatch):
    _write_pngs(tmp_path / "fit", smooth(4, 40, 52, seed=0))  # not multiples of 8: centre-cropped for fitting
    _write_pngs(tmp_path / "test", smooth(2, 32, 48, seed=1))
    out = tmp_path / "refs" / "references"
    fit = ["--fit-folder", str(tmp_path / "fit"), "--kmeans-iters", "3"]
    argv = ["--images", str(tmp_path / "test"), "--out", str(out), "--save", str(tmp_path / "saved")]
    code = run_script("eval_references", "--rows", "f8-pca4,f8-pca16,f8-kmeans4", *fit, *argv)
    assert code == 0
    data = json.loads(out.with_suffix(".json").read_text())
    rows = data["sets"][str(tmp_path / "test")]["rows"]
    assert [r["name"] for r in rows] == ["f8-pca4", "f8-pca16", "f8-kmeans4"] and list(data["sets"]) == [
        str(tmp_path / "test")
    ]
    assert [r["bits_out"] for r in rows] == [64, 256, 2] and all(r["images"] == 2 and r["reference"] for r in rows)
    assert rows[1]["psnr"] > rows[0]["psnr"] > rows[2]["psnr"]
    assert rows[2]["code_codebook_size"] == 4 and rows[2]["fit"]["patches"] == 4 * 5 * 6
    # PSNR of a row = the metric code applied to the saved reference's 8-bit reconstruction, image by image
    from mmgen.tokenizer_study.metrics import psnr_per_image, to_unit

    ref = load_reference(tmp_path / "saved" / "f8-pca16")
    x = torch.from_numpy(np.array(Image.open(tmp_path / "test" / "im0.png"))).permute(2, 0, 1)[None]
    z = ref.encode(x).bfloat16().float()
    per = data["sets"][str(tmp_path / "test")]["per_image"]["f8-pca16"]
    assert per[0]["psnr"] == pytest.approx(float(psnr_per_image(to_unit(ref.decode(z)), to_unit(x))[0]), abs=1e-4)
    md = out.with_suffix(".md").read_text()
    assert "| f8-kmeans4 | 8x8 | K=4 | 2 | 768 |" in md
    # the rate-distortion script takes the reference rows of one image set
    argv = [str(out.with_suffix(".json")), "--images", str(tmp_path / "test"), "--out", str(tmp_path / "rd.png")]
    assert run_script("rate_distortion", *argv) == 0
    assert (tmp_path / "rd.png").stat().st_size > 0
    monkeypatch.setenv("MMGEN_DEBUG", "1")  # the script raises its error instead of exiting
    with pytest.raises(ConfigError, match="--rows 'f8-pca': write each row as f<patch>-pca<channels>"):
        run_script("eval_references", "--rows", "f8-pca16,f8-pca", "--images", str(tmp_path / "test"))
