"""A release's sampling.json: the settings its model card was measured with become the pipeline's defaults;
an explicit option wins; a malformed file is a CheckpointError naming it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_release

from mmgen.errors import CheckpointError
from mmgen.sampling.pipeline import MMGenPipeline


@pytest.fixture(scope="module")
def release(tiny_assets, tmp_path_factory):
    return tiny_release(tiny_assets, tmp_path_factory.mktemp("rel") / "release")


def _image(pipe, **options):
    return pipe.text_to_image(["a large red circle"], seed=3, **options)[0]


def _trained_head(pipe):
    """An untrained image head is zero, so every setting would give the same image: give it weights."""
    torch.manual_seed(0)
    with torch.no_grad():
        torch.nn.init.normal_(pipe.model.image_out.weight, std=0.5)
    return pipe


def test_defaults_apply_and_explicit_options_win(release):
    plain = _trained_head(MMGenPipeline.from_pretrained(release))
    assert plain.defaults == {}
    (release / "sampling.json").write_text(json.dumps({"steps": 2, "guidance": 3.0}))
    try:
        pipe = _trained_head(MMGenPipeline.from_pretrained(release))
        assert pipe.defaults == {"steps": 2, "guidance": 3.0}
        assert (_image(pipe) == _image(plain, steps=2, guidance=3.0)).all()
        assert (_image(pipe) != _image(plain)).any()  # the defaults changed the image
        assert (_image(pipe, steps=1, guidance=1.5) == _image(plain, steps=1, guidance=1.5)).all()
    finally:
        (release / "sampling.json").unlink()


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"stepz": 2}', "expected an object of sampling options"),
        ('{"steps": 0}', "steps 0 is out of range"),
        ("[4]", "expected an object of sampling options"),
        ("{", "sampling.json"),
    ],
)
def test_a_bad_sampling_file_names_itself(release, content, match):
    (release / "sampling.json").write_text(content)
    try:
        with pytest.raises(CheckpointError, match=match):
            MMGenPipeline.from_pretrained(release)
    finally:
        (release / "sampling.json").unlink()
