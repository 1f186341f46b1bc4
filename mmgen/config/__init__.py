"""Typed configs: `load_config(RunConfig, path, overrides)`; see `core.py` (machinery) and `schema.py`."""

from mmgen.config.core import (
    ConfigError,
    dump_config,
    from_dict,
    load_config,
    merge_overrides,
    parse_override,
    read_yaml,
    to_dict,
)
from mmgen.config.schema import (
    CorpusSpec,
    DataConfig,
    FlowMatchingConfig,
    ImageTokenizerRecipe,
    ImmConfig,
    ModelConfig,
    ObjectiveConfig,
    RunConfig,
    SampleConfig,
    ShapesConfig,
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
    "from_dict",
    "load_config",
    "merge_overrides",
    "parse_override",
    "read_yaml",
    "to_dict",
]
