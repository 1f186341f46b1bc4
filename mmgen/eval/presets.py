"""The models the benchmarks time: a model preset of configs/model/ with random weights, built for the shapes
tokenizers of the repository (timings depend on the weights only through the number of tokens, so random
weights measure the same work as a trained model of the same sizes)."""

from __future__ import annotations

from pathlib import Path

import torch

from mmgen.config import ModelConfig, load_config
from mmgen.models.model import MMGenConfig, MMGenModel
from mmgen.tokenizer.text import SPECIAL_IDS

REPO = Path(__file__).resolve().parents[2]
TEXT_TOKENIZER = REPO / "tokenizers" / "text" / "shapes.yaml"  # recipes: trained on first use
IMAGE_TOKENIZER = REPO / "tokenizers" / "image" / "shapes_kl.yaml"


def preset(name: str) -> ModelConfig:
    """The model preset configs/model/<name>.yaml."""
    return load_config(ModelConfig, REPO / "configs" / "model" / f"{name}.yaml")


def bench_config(mcfg: ModelConfig, vocab_size: int, seq_len: int, image_size: int = 32, latent=(4, 4)) -> MMGenConfig:
    """The MMGenConfig of a benchmark model: the preset's sizes, an IMM image objective, sigma_d 0.5, for an
    image tokenizer of `latent` = (latent channels, downsampling factor)."""
    return MMGenConfig.from_model_config(
        mcfg,
        vocab_size=vocab_size,
        latent_channels=latent[0],
        image_size=image_size,
        downsample=latent[1],
        seq_len=seq_len,
        sigma_d=0.5,
        image_objective="imm",
        special_ids=SPECIAL_IDS,
    )


def random_pipe(preset_name: str, context: int, device: torch.device):
    """An MMGenPipeline of a preset with random weights (seed 0), 32-px images, for the shapes tokenizers."""
    from mmgen.sampling.pipeline import MMGenPipeline
    from mmgen.tokenizer.text import ensure_text_tokenizer
    from mmgen.tokenizer_study.train import ensure_image_tokenizer

    text = ensure_text_tokenizer(TEXT_TOKENIZER)
    image = ensure_image_tokenizer(IMAGE_TOKENIZER).to(device).eval()
    cfg = bench_config(preset(preset_name), len(text), context, 32, (image.latent_channels, image.downsample))
    torch.manual_seed(0)
    return MMGenPipeline(MMGenModel(cfg).to(device).eval(), text, image)
