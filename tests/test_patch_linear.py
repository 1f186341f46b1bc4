"""The linear patch path of image tokenizers (recipe `patch_linear`, issue 17): a PCA start, off = unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from image_helpers import pools, smooth_images, tiny

from mmgen.tokenizer.image import ImageTokenizer, load_image_tokenizer
from mmgen.tokenizer_study.references import PCAReference
from mmgen.tokenizer_study.train import _read_data, init_patch_linear, pca_init_crops, train_image_tokenizer


def images(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.stack(smooth_images(n, seed=seed))).permute(0, 3, 1, 2).contiguous()  # uint8


def test_pca_start_reconstructs_exactly_the_pca_reference():
    torch.manual_seed(0)
    tok = ImageTokenizer(tiny("kl", patch_linear=True)).eval()
    pca = init_patch_linear(tok, [images(16, 0)])
    assert pca.latent_channels == tok.latent_channels == 3
    x = images(4, 5)
    torch.testing.assert_close(tok.encode(x), pca.encode(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tok.decode(tok.encode(x)), pca.reconstruct(x).clamp(-1, 1), atol=1e-5, rtol=1e-5)
    # the training path samples the posterior, whose std starts at e^-6: still the PCA reconstruction
    recon, out = tok.train()(tok.pixels_to_float(x))
    torch.testing.assert_close(recon, pca.reconstruct(x), atol=0.02, rtol=0)


def test_a_fresh_run_starts_at_the_pca_of_its_first_training_crops_and_resumes_without_refitting(tmp_path):
    recipe = tiny("kl", patch_linear=True, steps=4, ckpt_every=2)
    start = train_image_tokenizer(recipe, tmp_path / "a", resume="none", pools=pools(), progress=False, stop_at=0)
    sampler, _ = _read_data(recipe, pools())
    pca = PCAReference.fit(pca_init_crops(sampler, recipe.downsample), recipe.downsample, recipe.latent_channels)
    x = images(4, 5)
    torch.testing.assert_close(start.decode(start.encode(x)), pca.reconstruct(x).clamp(-1, 1), atol=1e-5, rtol=1e-5)
    full = train_image_tokenizer(recipe, tmp_path / "full", resume="none", pools=pools(), progress=False)
    train_image_tokenizer(recipe, tmp_path / "split", resume="none", pools=pools(), progress=False, stop_at=2)
    resumed = train_image_tokenizer(recipe, tmp_path / "split", resume="auto", pools=pools(), progress=False)
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.parametrize("kind", ["vq", "fsq"])
def test_discrete_tokenizers_start_near_the_pca_reconstruction(kind):
    torch.manual_seed(0)
    tok = ImageTokenizer(tiny(kind, patch_linear=True)).eval()
    pca = init_patch_linear(tok, [images(16, 0)])
    x = images(8, 5)
    target = tok.pixels_to_float(x)
    err = (tok.decode(tok.encode(x)) - target).square().mean()
    assert err < 0.5 * target.var(), (err, target.var())  # the quantised PCA, not noise or a saturated grid
    assert err > (pca.reconstruct(x) - target).square().mean()  # quantisation only loses


def test_off_keeps_the_state_dict_and_the_trunk_only_outputs():
    torch.manual_seed(0)
    tok = ImageTokenizer(tiny("kl")).eval()
    assert tok.patch is None and not any(k.startswith("patch") for k in tok.state_dict())
    torch.manual_seed(0)
    explicit = ImageTokenizer(tiny("kl", patch_linear=False)).eval()
    assert all(torch.equal(v, explicit.state_dict()[k]) for k, v in tok.state_dict().items())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = tok.bottleneck.encode(tok.encoder(x))
    assert torch.equal(tok.encode(x), z) and torch.equal(tok.decode(z), tok.decoder(z).clamp(-1, 1))
    with pytest.raises(ValueError, match="patch_linear"):
        tok.init_patch_pca(torch.zeros(48), torch.eye(3, 48), torch.ones(3))


def test_a_config_json_without_the_key_loads(tmp_path):
    tok = ImageTokenizer(tiny("fsq")).eval()
    tok.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["recipe"]["patch_linear"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    again = load_image_tokenizer(tmp_path / "old")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert again.patch is None and torch.equal(again.decode(again.encode(x)), tok.decode(tok.encode(x)))


def test_a_checkpoint_without_the_key_resumes(tmp_path):
    recipe = tiny("vq", steps=4, ckpt_every=2)
    train_image_tokenizer(recipe, tmp_path, resume="none", pools=pools(), progress=False, stop_at=2)
    (ckpt,) = (tmp_path / "checkpoints").glob("step_*.pt")
    state = torch.load(ckpt, weights_only=True)
    del state["recipe"]["patch_linear"]
    torch.save(state, ckpt)
    train_image_tokenizer(recipe, tmp_path, resume="auto", pools=pools(), progress=False)


def test_save_load_round_trip_keeps_the_patch_path(tmp_path):
    torch.manual_seed(0)
    tok = ImageTokenizer(tiny("kl", patch_linear=True)).eval()
    init_patch_linear(tok, [images(16, 0)])
    with torch.no_grad():
        tok.patch.dec.weight.mul_(1.5)  # not the PCA any more: the saved weights, not a refit, must come back
    tok.save_pretrained(tmp_path / "pl")
    assert json.loads((tmp_path / "pl" / "config.json").read_text())["recipe"]["patch_linear"] is True
    again = load_image_tokenizer(tmp_path / "pl")
    assert again.patch is not None and {"patch.enc.weight", "patch.dec.bias"} <= set(again.state_dict())
    x = images(2, 5)
    assert torch.equal(again.decode(again.encode(x)), tok.decode(tok.encode(x)))


def test_channels_and_patch_path_flow_into_the_multimodal_model(tiny_assets, tmp_path):
    """A 16-channel patch-linear tokenizer in a training run: the model config takes the tokenizer's channels
    and downsampling (patch_dim = channels x patch^2), and a training step on its latents is finite."""
    import shutil

    from helpers import tiny_run

    from mmgen.config import ImageTokenizerRecipe
    from mmgen.train.loop import Trainer

    assets = tmp_path / "assets"
    shutil.copytree(tiny_assets / "text", assets / "text")
    recipe = ImageTokenizerRecipe(
        name="tiny16",
        kind="kl",
        downsample=4,
        width=8,
        channel_mult=[1, 1, 1],
        latent_channels=16,
        patch_linear=True,
        sources=["shapes"],
    )
    torch.manual_seed(0)
    ImageTokenizer(recipe).save_pretrained(assets / "image")
    trainer = Trainer(tiny_run(assets, tmp_path / "run"))
    mc = trainer.mconf
    assert mc.latent_channels == 16 and mc.patch_dim == 16 * mc.patch_size**2
    last = trainer.train_step(trainer._micro_batches(iter(trainer.data)))
    assert np.isfinite(last["loss"]) and last["image_targets"] > 0
