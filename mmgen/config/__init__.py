"""Typed configs: `load_config(RunConfig, path, overrides)`; see `core.py` (machinery), `schema.py` and
`data.py` (the dataclasses), `ranges.py` (the allowed values of numbers)."""

from mmgen.config.core import (
    ConfigError,
    dump_config,
    flatten,
    from_dict,
    load_config,
    merge_overrides,
    parse_override,
    read_yaml,
    to_dict,
)
from mmgen.config.data import DataConfig, ShapesConfig
from mmgen.config.schema import (
    CorpusSpec,
    FlowMatchingConfig,
    ImageTokenizerRecipe,
    ImmConfig,
    ModelConfig,
    ObjectiveConfig,
    RunConfig,
    SampleConfig,
    TextTokenizerRecipe,
    TrainConfig,
)

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
