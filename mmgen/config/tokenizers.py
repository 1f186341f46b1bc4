"""The recipes of the tokenizers (`tokenizers/text/*.yaml`, `tokenizers/image/*.yaml`); importable from
`mmgen.config.schema` and `mmgen.config` as before."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from mmgen.config.ranges import AT_LEAST_0, AT_LEAST_1, LEARNING_RATE, UNIT, UNIT_OPEN, Range, _check


# ------------------------------------------------------------------------------------------ tokenizers
@dataclass
class CorpusSpec:
    """One text source for tokenizer training: `shapes`, `cifar10`, `flickr8k`, `mnist`, or `text:<file>`."""

    source: str
    limit: int = 0  # max sentences taken from it; 0 = all

    RANGES: ClassVar[dict[str, Range]] = {"limit": AT_LEAST_0}


@dataclass
class TextTokenizerRecipe:
    """Recipe of a sentencepiece text tokenizer (`tokenizers/text/*.yaml`)."""

    name: str
    model_type: Literal["bpe", "unigram"] = "bpe"
    vocab_size: int = 512
    corpora: list[CorpusSpec] = field(default_factory=lambda: [CorpusSpec("shapes", 20000)])
    character_coverage: float = 1.0
    byte_fallback: bool = True
    max_sentence_length: int = 4096

    RANGES: ClassVar[dict[str, Range]] = {
        "vocab_size": Range(64, 1 << 20),
        "character_coverage": Range(0, 1, lo_open=True),
        "max_sentence_length": AT_LEAST_1,
    }

    def __post_init__(self) -> None:
        _check(self.vocab_size >= 64, f"vocab_size must be >= 64, got {self.vocab_size}")
        _check(len(self.corpora) > 0, "corpora must name at least one source")


# ------------------------------------------------------------------------------------- image tokenizers
@dataclass
class ImageTokenizerRecipe:
    """Recipe of an image tokenizer (`tokenizers/image/*.yaml`): one conv trunk, one of three bottlenecks.

    Only `kind` and the bottleneck fields differ between the continuous (kl) and discrete (vq, fsq) members
    of a comparison; trunk, data, steps and seed stay the same. The whole recipe is saved with the weights.
    """

    name: str
    kind: Literal["kl", "vq", "fsq"] = "kl"
    # trunk: log2(f) stride-2 stages; channels at level i (resolution / 2^i) = width * channel_mult[i]
    downsample: int = 8  # f: one latent position covers f x f pixels (4, 8 or 16)
    width: int = 32
    channel_mult: list[int] = field(default_factory=list)  # log2(f) + 1 entries; [] = min(2^i, 4)
    blocks: int = 1  # residual blocks per level, encoder and decoder alike
    # a linear f x f patch path beside both trunks (mmgen/tokenizer/patch_linear.py), started at the principal
    # components of training patches, so training begins at the linear reference; off = the trunk alone
    patch_linear: bool = False
    # kl: a diagonal Gaussian posterior with `latent_channels` channels
    latent_channels: int = 4
    kl_weight: float = 1e-4  # on the per-element mean KL to N(0, I)
    # vq: `codebook_size` L2-normalised codes of `code_dim` channels, EMA updates, dead-code restarts
    codebook_size: int = 16384
    code_dim: int = 8
    ema_decay: float = 0.99
    dead_code_steps: int = 50  # a code no vector chose for this many steps is moved onto a batch vector
    commitment_weight: float = 0.25
    # fsq: one channel per entry, each rounded to that many levels (prod(levels) codes)
    levels: list[int] = field(default_factory=lambda: [8, 8, 8, 5, 5, 5])
    # reconstruction loss on pixels in [-1, 1]; no perceptual or adversarial term (none is implemented)
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    # data: random crops (and flips) of `sources` (flickr8k, cifar10, shapes); a source with smaller images
    # is cropped at its own size with a larger batch, so every step sees the same number of pixels
    sources: list[str] = field(default_factory=lambda: ["flickr8k", "cifar10"])
    source_weights: list[float] = field(default_factory=list)  # chance per step of each source; [] = equal
    images_per_source: int = 0  # 0 = all training images of each source
    crop_size: int = 64
    batch_size: int = 16
    # optimisation (AdamW, linear warm-up then cosine to min_lr_ratio * lr)
    steps: int = 2000
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 = off
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 200
    val_images: int = 64  # held-out images per source for the validation PSNR
    stats_batches: int = 16  # training batches whose latents give the per-channel mean / std

    RANGES: ClassVar[dict[str, Range]] = {
        "width": Range(4, 4096),
        "blocks": Range(0, 64),
        "latent_channels": Range(1, 1024),
        "kl_weight": AT_LEAST_0,
        "codebook_size": Range(2, 1 << 20),
        "code_dim": Range(1, 1024),
        "ema_decay": UNIT_OPEN,
        "dead_code_steps": AT_LEAST_1,
        "commitment_weight": AT_LEAST_0,
        "levels": Range(2, 1 << 16),
        "l1_weight": AT_LEAST_0,
        "l2_weight": AT_LEAST_0,
        "source_weights": AT_LEAST_0,
        "images_per_source": AT_LEAST_0,
        "crop_size": Range(2, 4096),
        "batch_size": Range(1, 65536),
        "steps": AT_LEAST_1,
        "lr": LEARNING_RATE,
        "warmup_steps": AT_LEAST_0,
        "min_lr_ratio": UNIT,
        "weight_decay": Range(0, 10),
        "grad_clip": AT_LEAST_0,
        "seed": AT_LEAST_0,
        "log_every": AT_LEAST_1,
        "ckpt_every": AT_LEAST_1,
        "val_images": AT_LEAST_0,
        "stats_batches": AT_LEAST_1,
    }

    def __post_init__(self) -> None:
        _check(self.downsample in (2, 4, 8, 16, 32), f"downsample must be a power of 2 in 2..32, got {self.downsample}")
        n_levels = self.downsample.bit_length()  # log2(f) + 1
        _check(
            not self.channel_mult or len(self.channel_mult) == n_levels,
            f"channel_mult needs log2({self.downsample}) + 1 = {n_levels} entries, got {self.channel_mult}",
        )
        _check(self.width >= 4 and self.blocks >= 0, "width must be >= 4 and blocks >= 0")
        _check(self.latent_channels >= 1 and self.code_dim >= 1, "latent_channels and code_dim must be >= 1")
        _check(self.codebook_size >= 2, f"codebook_size must be >= 2, got {self.codebook_size}")
        _check(0.0 <= self.ema_decay < 1.0, "ema_decay must lie in [0, 1)")
        _check(
            len(self.levels) >= 1 and all(v >= 2 for v in self.levels), f"levels must be >= 2 each, got {self.levels}"
        )
        _check(len(self.sources) >= 1, "sources must name at least one of flickr8k, cifar10, shapes")
        _check(
            not self.source_weights or len(self.source_weights) == len(self.sources),
            "source_weights needs one weight per source (or [] for equal)",
        )
        _check(
            self.crop_size % self.downsample == 0,
            f"crop_size {self.crop_size} must be a multiple of downsample {self.downsample}",
        )
        _check(self.steps >= 1 and self.batch_size >= 1, "steps and batch_size must be >= 1")
