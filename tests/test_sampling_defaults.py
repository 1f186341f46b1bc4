"""A release's sampling.json: the settings its model card was measured with become the pipeline's defaults;
an explicit option wins; a malformed file is a CheckpointError naming it."""

from __future__ import annotations

import json
from contextlib import contextmanager

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


@contextmanager
def _sampling_file(release, content: str):
    """The release with `content` as its sampling.json for the duration of the block."""
    (release / "sampling.json").write_text(content)
    try:
        yield
    finally:
        (release / "sampling.json").unlink()


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"stepz": 2}', "expected an object of sampling options"),
        ('{"steps": 0}', "steps 0 is out of range"),
        ("[4]", "expected an object of sampling options"),
        ("{", "sampling.json"),
        ('{"guidance_by_steps": {"one": 1.0}}', "must map step counts"),
        ('{"guidance_by_steps": {"0": 1.0}}', "steps 0 is out of range"),
        ('{"guidance_by_steps": [1.0]}', "must map step counts"),
    ],
)
def test_a_bad_sampling_file_names_itself(release, content, match):
    with _sampling_file(release, content), pytest.raises(CheckpointError, match=match):
        MMGenPipeline.from_pretrained(release)


def test_guidance_by_steps_sets_the_guidance_of_its_step_counts(release):
    plain = _trained_head(MMGenPipeline.from_pretrained(release))
    spec = {"steps": 4, "guidance": 3.0, "guidance_by_steps": {"1": 1.0, "2": 1.5}}
    with _sampling_file(release, json.dumps(spec)):
        pipe = _trained_head(MMGenPipeline.from_pretrained(release))
        assert (_image(pipe, steps=1) == _image(plain, steps=1, guidance=1.0)).all()
        assert (_image(pipe, steps=2) == _image(plain, steps=2, guidance=1.5)).all()
        assert (_image(pipe) == _image(plain, steps=4, guidance=3.0)).all()  # no entry: the release's guidance
        assert (_image(pipe, steps=1, guidance=3.0) == _image(plain, steps=1, guidance=3.0)).all()  # explicit wins
        assert (_image(pipe, steps=1) != _image(plain, steps=1, guidance=3.0)).any()


def test_guidance_by_steps_applies_to_the_files_own_steps_and_normalises_keys(release):
    """steps from sampling.json itself pick their guidance too (over the file's own guidance); "01" means 1."""
    plain = _trained_head(MMGenPipeline.from_pretrained(release))
    with _sampling_file(release, json.dumps({"steps": 1, "guidance": 3.0, "guidance_by_steps": {"01": 1.0}})):
        pipe = _trained_head(MMGenPipeline.from_pretrained(release))
        assert pipe.defaults["guidance_by_steps"] == {1: 1.0}
        assert (_image(pipe) == _image(plain, steps=1, guidance=1.0)).all()
        assert (_image(pipe, steps=2) == _image(plain, steps=2, guidance=3.0)).all()
