"""The flow-map module's time range: stored in the model config from the objective that trains it, read by the
sampler; the sampling defaults are defined once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_model, tiny_sizes

from mmgen.config import RunConfig, SampleConfig, from_dict
from mmgen.config.schema import GUIDANCE, STEPS, TIME_GRID
from mmgen.flowmap import default_time_range, time_range
from mmgen.models.model import MMGenConfig
from mmgen.sampling import interleaved
from mmgen.sampling.flow_map import time_grid
from mmgen.sampling.interleaved import SamplingOptions
from mmgen.sampling.pipeline import MMGenPipeline
from mmgen.train.build import model_config


def test_default_time_range_is_each_objectives_default():
    assert default_time_range("imm") == (0.0, 0.994) and default_time_range("fm") == (0.0, 1.0)
    assert (MMGenConfig().t_min, MMGenConfig().t_max) == (0.0, 0.994)
    assert MMGenConfig(image_objective="fm").t_max == 1.0
    with pytest.raises(ValueError, match="t_min < t_max"):
        MMGenConfig(t_min=0.5, t_max=0.5)


@pytest.mark.parametrize("image, key", [("imm", "imm"), ("fm", "fm")])
def test_the_model_config_stores_the_trained_time_range(image, key):
    run = from_dict(RunConfig, {"objective": {"image": image, key: {"t_min": 0.01, "t_max": 0.9}}})
    assert time_range(run.objective) == (0.01, 0.9)
    tok = SimpleNamespace(latent_channels=4, downsample=4)
    mc = model_config(run, [0] * 320, tok)
    assert (mc.t_min, mc.t_max) == (0.01, 0.9) and mc.to_dict()["t_max"] == 0.9


def test_the_sampler_integrates_over_the_models_time_range(tiny_assets, monkeypatch):
    text, image, model = tiny_model(tiny_assets, **tiny_sizes(image_size=16, max_seq_len=64, t_min=0.02, t_max=0.9))
    grids = []

    def spy(*args):
        grids.append(time_grid(*args))
        return grids[-1]

    monkeypatch.setattr(interleaved, "time_grid", spy)
    MMGenPipeline(model, text, image).text_to_image(["a red circle"], steps=2)
    assert torch.allclose(grids[0], torch.tensor([0.9, 0.46, 0.02]))


def test_sampling_defaults_are_defined_once():
    assert (SampleConfig().steps, SampleConfig().guidance) == (STEPS, GUIDANCE) == (4, 1.5)
    opts = SamplingOptions()
    assert (opts.steps, opts.guidance, opts.time_grid) == (STEPS, GUIDANCE, TIME_GRID)
