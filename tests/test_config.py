"""Configs: every file in configs/ and tokenizers/ loads; bad keys and types fail naming key and file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from mmgen.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    ShapesConfig,
    TextTokenizerRecipe,
    dump_config,
    load_config,
    to_dict,
)


def _class_for(path: Path):
    from mmgen.config import schema

    rel = path.relative_to(REPO).parts  # tokenizers/text/<name>/recipe.yaml is an artifact's recipe copy
    table = {
        ("configs", "model"): ModelConfig,
        ("configs", "train"): RunConfig,
        ("tokenizers", "text"): TextTokenizerRecipe,
        ("tokenizers", "image"): getattr(schema, "ImageTokenizerRecipe", None),
    }
    return table.get(rel[:2], "unknown")


def _all_yaml():
    return sorted(list((REPO / "configs").rglob("*.yaml")) + list((REPO / "tokenizers").rglob("*.yaml")))


def test_there_are_configs():
    assert any(p.parent.name == "train" for p in _all_yaml())
    assert any(p.parent.name == "text" for p in _all_yaml())


@pytest.mark.parametrize("path", _all_yaml(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_loads(path: Path, tmp_path: Path):
    if path.parent.name == "accelerate":
        from accelerate.commands.config.config_args import load_config_from_file

        cfg = load_config_from_file(str(path))
        ds = getattr(cfg, "deepspeed_config", None) or {}
        if ds.get("deepspeed_config_file"):
            assert (REPO / ds["deepspeed_config_file"]).is_file(), ds["deepspeed_config_file"]
        return
    cls = _class_for(path)
    assert cls not in ("unknown", None), f"{path}: no config class is registered for this folder"
    cfg = load_config(cls, path)
    # the dump of a loaded config loads back to the same config
    again = load_config(cls, dump_config(cfg, tmp_path / "roundtrip.yaml"))
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "deepspeed").glob("*.json")), ids=lambda p: p.name)
def test_deepspeed_json_is_valid(path: Path):
    cfg = json.loads(path.read_text())
    assert "zero_optimization" in cfg and "stage" in cfg["zero_optimization"]
    assert cfg.get("gradient_clipping") is not None, "write gradient_clipping explicitly (DeepSpeed defaults it)"


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"model": {"depth": 2, "widht": 64}}))
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, p)
    msg = str(e.value)
    assert "model.widht" in msg and str(p) in msg and "did you mean 'model.width'" in msg


def test_wrong_type_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"train": {"steps": "many"}}))
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, p)
    assert "train.steps" in str(e.value) and "int" in str(e.value) and str(p) in str(e.value)


def test_literal_and_validation_errors(tmp_path):
    with pytest.raises(ConfigError, match="objective.image.*'imm', 'fm'"):
        load_config(RunConfig, None, ["objective.image=diffusion"])
    with pytest.raises(ConfigError, match="ema_decay"):
        load_config(RunConfig, None, ["train.ema_decay=1.5"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        (tmp_path / "x.yaml").write_text("model: [unclosed")
        load_config(RunConfig, tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(RunConfig, tmp_path / "missing.yaml")


def test_overrides_apply_and_are_checked():
    cfg = load_config(
        RunConfig, None, ["train.steps=7", "train.lr=3e-4", "model.depth=2", "data.shapes.colors=[red, blue]"]
    )
    assert (cfg.train.steps, cfg.train.lr, cfg.model.depth) == (7, 3e-4, 2)
    assert cfg.data.shapes.colors == ["red", "blue"]
    with pytest.raises(
        ConfigError, match="unknown key 'train.stepz'.*override 'train.stepz=3'|override 'train.stepz=3'.*stepz"
    ):
        load_config(RunConfig, None, ["train.stepz=3"])
    with pytest.raises(ConfigError, match="override 'model.depth=two'.*model.depth"):
        load_config(RunConfig, None, ["model.depth=two"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(RunConfig, None, ["train.steps"])


def test_dump_is_readable_yaml(tmp_path):
    cfg = load_config(RunConfig, None, ["train.steps=3"])
    out = dump_config(cfg, tmp_path / "run" / "config.yaml")
    data = yaml.safe_load(out.read_text())
    assert data["train"]["steps"] == 3 and data["model"]["depth"] == cfg.model.depth


@dataclass
class Outer:
    shapes: ShapesConfig = field(default_factory=lambda: ShapesConfig(image_size=64, colors=["red"]))


def test_partial_nested_mapping_keeps_the_parents_nested_defaults(tmp_path):
    p = tmp_path / "o.yaml"
    p.write_text("shapes:\n  p_two_objects: 0.0\n")
    cfg = load_config(Outer, p, ["shapes.sizes=[small]"])
    assert (cfg.shapes.image_size, cfg.shapes.colors, cfg.shapes.p_two_objects, cfg.shapes.sizes) == (
        64,
        ["red"],
        0.0,
        ["small"],
    )


@pytest.mark.parametrize("path", sorted(REPO.glob("releases/*/run_config.yaml")), ids=lambda p: p.parent.name)
def test_release_run_config_loads(path: Path):
    """A shipped release's run config loads, keys retired since it was made (SampleConfig.RETIRED) included."""
    cfg = load_config(RunConfig, path)
    assert set(to_dict(cfg)["sample"]) == {"prompts", "steps", "guidance", "seed"}
