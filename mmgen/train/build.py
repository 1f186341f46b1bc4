"""From a `RunConfig` to the pieces of a run: tokenizers, resolved model config, packing, document source.

Everything here fails before training starts when the config cannot work (unknown tokenizer path,
sequence too short for one image, a shard folder that does not exist), naming the key to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmgen.config import ConfigError, RunConfig
from mmgen.data.loader import DataCursor, PackedDataset, ShapesStream, make_loader
from mmgen.data.packing import Packer, PackSpec
from mmgen.data.plan import TokenPlan
from mmgen.data.shards import ShardStream, Split
from mmgen.errors import MMGenError
from mmgen.flowmap import image_config
from mmgen.models.model import MMGenConfig
from mmgen.objectives.multimodal import MultimodalLoss
from mmgen.tokenizer.text import SPECIAL_IDS, ensure_text_tokenizer

if TYPE_CHECKING:  # imported where used: the teacher's release loader is only needed with objective.distill
    from mmgen.train.distill import JumpDistillation


def _tokenizer_path(path: str, key: str) -> Path:
    p = Path(path)
    if not p.exists() and not p.with_suffix("").exists():
        raise ConfigError(f"{key}: no tokenizer recipe or folder at '{path}' (set {key}=<recipe .yaml or folder>)")
    return p


def load_tokenizers(cfg: RunConfig):
    """(text tokenizer, image tokenizer), training either from its recipe when the artifact is missing."""
    from mmgen.tokenizer_study.train import ensure_image_tokenizer

    text = ensure_text_tokenizer(_tokenizer_path(cfg.text_tokenizer, "text_tokenizer"))
    image = ensure_image_tokenizer(_tokenizer_path(cfg.image_tokenizer, "image_tokenizer"))
    if image.kind != "kl":
        raise ConfigError(
            f"image_tokenizer: the generative model needs a continuous (kl) tokenizer, "
            f"'{cfg.image_tokenizer}' is {image.kind}"
        )
    if cfg.data.latents:  # cached latents are only valid for the tokenizer that made them
        from mmgen.data.latent_cache import check_latents

        check_latents(cfg.data.shards, image, cfg.data.image_size)
    return text, image


def model_config(cfg: RunConfig, text_tok, image_tok) -> MMGenConfig:
    trained = image_config(cfg.objective)  # sigma_d and the time range the model will sample with
    try:
        return MMGenConfig.from_model_config(
            cfg.model,
            vocab_size=len(text_tok),
            latent_channels=image_tok.latent_channels,
            image_size=cfg.data.image_size,
            downsample=image_tok.downsample,
            seq_len=cfg.data.seq_len,
            sigma_d=trained.sigma_d,
            image_objective=cfg.objective.image,
            special_ids=SPECIAL_IDS,
            t_min=trained.t_min,
            t_max=trained.t_max,
        )
    except ValueError as e:
        raise ConfigError(f"model / data.image_size: {e}") from e


def pack_spec(cfg: RunConfig, mc: MMGenConfig) -> PackSpec:
    spec = PackSpec.from_config(mc, rows=cfg.data.rows, seq_len=cfg.data.seq_len)  # mc.image_size = data's
    need = spec.image_doc_len(noisy=True) + 8
    if cfg.data.seq_len < need:
        raise ConfigError(
            f"data.seq_len={cfg.data.seq_len} is too short: one image takes {2 * spec.image_tokens} tokens "
            f"(noisy + clean copy of a {mc.image_grid[0]}x{mc.image_grid[1]} grid) plus its caption; "
            f"use data.seq_len >= {need}"
        )
    if mc.max_seq_len < cfg.data.seq_len:
        raise ConfigError(f"model.max_seq_len={mc.max_seq_len} is below data.seq_len={cfg.data.seq_len}")
    return spec


def document_source(cfg: RunConfig, split: Split):
    d = cfg.data
    if d.source == "shapes":
        shapes = d.shapes
        if shapes.image_size != d.image_size:  # the generator draws at the model's resolution
            from dataclasses import replace

            shapes = replace(shapes, image_size=d.image_size)
        return ShapesStream(shapes, split)
    if d.source in ("img2dataset", "imagefolder", "jsonl"):
        from mmgen.data.external import ReadOptions, open_layout

        opts = ReadOptions.of(d.image_size, d.min_image_size, d.caption_field, d.caption_layout)
        return open_layout(d.source, d.path, opts, split, seed=d.seed, shuffle_buffer=d.shuffle_buffer)
    if d.latents:  # only the shards the cache's index.json lists: they are the ones its tokenizer made
        from mmgen.data.latent_cache import cached_shards

        return ShardStream(cached_shards(d.shards)[0], split, seed=d.seed, shuffle_buffer=d.shuffle_buffer)
    try:
        return ShardStream(d.shards, split, seed=d.seed, shuffle_buffer=d.shuffle_buffer)
    except FileNotFoundError as e:
        raise ConfigError(f"data.shards: {e}") from e


@dataclass
class DataPipe:
    loader: Any
    cursor: DataCursor

    def __iter__(self):
        return iter(self.loader)


def data_pipe(
    cfg: RunConfig, spec: PackSpec, text_tok, rank: int, world: int, cursor_state: dict | None = None
) -> DataPipe:
    n_logical = max(1, cfg.data.num_workers)
    split = Split(rank, world, n_logical)
    cursor = DataCursor.from_state(cursor_state, n_logical) if cursor_state else DataCursor(n_logical)
    source = document_source(cfg, split)
    latents_of = ""  # the sha256 of the tokenizer every cached document must name (checked by the packer)
    if cfg.data.latents:
        from mmgen.data.latent_cache import cached_shards

        latents_of = cached_shards(cfg.data.shards)[1]  # load_tokenizers checked it is this run's tokenizer
    ds = PackedDataset(source, Packer(text_tok, spec, use_latents=cfg.data.latents, latents_of=latents_of), cursor)
    return DataPipe(make_loader(ds, cfg.data.num_workers), cursor)


@torch.no_grad()
def clean_latents(batch: TokenPlan, image_tok, sigma_d: float, device: torch.device) -> torch.Tensor:
    """Normalised latents x0 [N, C, h, w] of every image in the batch (std about sigma_d)."""
    images = batch.images.to(device)
    z = images if images.is_floating_point() else image_tok.encode(images)
    return image_tok.normalize(z) * sigma_d


def distillation(
    cfg: RunConfig, loss_fn: MultimodalLoss, mconf: MMGenConfig, tokenizers: tuple, device: torch.device
) -> JumpDistillation | None:
    """objective.distill's term (None when no teacher is set or its weight is 0): the teacher release, checked
    against the run's tokenizers and model, frozen on the run's device."""
    d = cfg.objective.distill
    if not d.teacher or d.weight == 0:
        return None
    if cfg.objective.image != "imm":
        raise ConfigError(
            "objective.distill trains a flow map's 1-step jump f(x_T, T, t_min): set objective.image=imm, or leave "
            "objective.distill.teacher empty"
        )
    from mmgen.sampling.release import load_release
    from mmgen.train.distill import JumpDistillation, check_teacher
    from mmgen.train.manifest import sha256

    try:
        teacher, *teacher_tokenizers = load_release(d.teacher, device)
    except MMGenError as e:
        raise type(e)(f"objective.distill.teacher: {e}") from e
    check_teacher(teacher, tuple(teacher_tokenizers), mconf, tokenizers, d.teacher)
    weights = sha256(Path(d.teacher) / "model.safetensors")  # recorded in checkpoints: a resumed run checks it
    image_tok, sigma = tokenizers[1].requires_grad_(False), loss_fn.sigma_d  # frozen: space=pixel trains through it

    def pixels(x: torch.Tensor) -> torch.Tensor:  # the model's latent (std sigma_d) -> decoded pixels
        return image_tok.pixels(image_tok.denormalize(x / sigma))

    return JumpDistillation(d, loss_fn, teacher, (mconf.t_min, mconf.t_max), weights, pixels)
