"""Typed configs: `load_config(RunConfig, path, overrides)`; see `core.py` (machinery), `yaml_io.py` (reading and
writing YAML), `schema.py`, `tokenizers.py` and `data.py` (the dataclasses), `ranges.py` (the allowed values of
numbers)."""

from mmgen.config.core import ConfigError, from_dict, load_config, merge_overrides, parse_override
from mmgen.config.data import DataConfig, ShapesConfig
from mmgen.config.schema import (
    FlowMatchingConfig,
    ImmConfig,
    ModelConfig,
    ObjectiveConfig,
    RunConfig,
    SampleConfig,
    TrainConfig,
)
from mmgen.config.tokenizers import CorpusSpec, ImageTokenizerRecipe, TextTokenizerRecipe
from mmgen.config.yaml_io import dump_config, flatten, read_yaml, to_dict

__all__ = [
    "ConfigError",
    "CorpusSpec",
    "DataConfig",
    "FlowMatchingConfig",
    "ImageTokenizerRecipe",
    "ImmConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "RunConfig",
    "SampleConfig",
    "ShapesConfig",
    "TextTokenizerRecipe",
    "TrainConfig",
    "dump_config",
    "flatten",
    "from_dict",
    "load_config",
    "merge_overrides",
    "parse_override",
    "read_yaml",
    "to_dict",
]
