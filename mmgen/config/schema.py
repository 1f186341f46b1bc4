"""The typed config of every component. YAML files in `configs/` and `tokenizers/` fill these.

Fields left at 0 are derived at build time (e.g. `model.vocab_size` from the text tokenizer); the resolved
values are written into the run's `config.yaml` and into the release checkpoint's `config.json`. The data
configs live in `data.py`, the tokenizer recipes in `tokenizers.py`, the number ranges in `ranges.py`; all are
importable from here as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from mmgen.config.data import DataConfig, ShapesConfig  # noqa: F401 (ShapesConfig: re-exported from here too)
from mmgen.config.ranges import (
    AT_LEAST_0,
    AT_LEAST_1,
    LEARNING_RATE,
    MAX_SAMPLER_STEPS,
    MAX_SEQ_LEN,
    POSITIVE,
    UNIT,
    UNIT_OPEN,
    Range,
    _check,
)
from mmgen.config.tokenizers import CorpusSpec, ImageTokenizerRecipe, TextTokenizerRecipe  # noqa: F401 (re-exported)


# ----------------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    """The MoT backbone. `depth` is the one scaling dial: width = depth * aspect_ratio, heads = width / head_dim."""

    depth: int = 4
    aspect_ratio: int = 32
    width: int = 0  # 0 = depth * aspect_ratio
    head_dim: int = 32
    mlp_ratio: float = 4.0  # SwiGLU hidden size = mlp_ratio * 2/3 * width (rounded up to a multiple of 32)
    experts: Literal["mot", "dense"] = "mot"  # dense = one set of weights for every token (the baseline)
    qk_norm: bool = True
    image_adaln: bool = True  # flow-map times modulate the image expert's norms (adaLN, zero-initialised)
    patch_size: int = 2  # latent patch side; an image token holds patch_size^2 * latent_channels values
    rope_theta: float = 10000.0
    time_freq_dim: int = 256
    # the flow map's second time input: "s" (the IMM paper's identity option), "stride" (t - s) or "both"
    time_input: Literal["s", "stride", "both"] = "s"
    # a learned absolute (row, col) embedding added to every image token: rotary positions alone give a 4x4
    # latent grid only one or two useful frequencies per axis; on shapes it lowers the loss (0.335 vs 0.361 at
    # 1000 steps), with no measurable accuracy change yet (docs/results.md section 1)
    image_pos_embed: bool = True
    init_std: float = 0.02
    init_image_from_text: bool = False  # start the image expert as a copy of the text expert
    max_seq_len: int = 0  # 0 = data.seq_len
    vocab_size: int = 0  # 0 = the text tokenizer's
    latent_channels: int = 0  # 0 = the image tokenizer's
    # attention kernel: flex = FlexAttention block mask (skips tiles between packed documents), sdpa = dense
    # [B, 1, L, L] mask; auto = flex on CUDA, sdpa elsewhere (torch has no FlexAttention backward on a CPU)
    attention: Literal["auto", "sdpa", "flex"] = "auto"

    RANGES: ClassVar[dict[str, Range]] = {
        "depth": Range(1, 256),
        "aspect_ratio": Range(1, 1024),
        "width": Range(0, 65536),
        "head_dim": Range(8, 1024),
        "mlp_ratio": Range(0, 64, lo_open=True),
        "patch_size": Range(1, 64),
        "rope_theta": POSITIVE,
        "time_freq_dim": Range(2, 65536),
        "init_std": Range(0, 1, lo_open=True),
        "max_seq_len": Range(0, MAX_SEQ_LEN),
        "vocab_size": Range(0, 1 << 24),
        "latent_channels": Range(0, 1024),
    }

    def __post_init__(self) -> None:
        _check(self.depth >= 1, f"depth must be >= 1, got {self.depth}")
        w = self.width or self.depth * self.aspect_ratio
        _check(w % self.head_dim == 0, f"width {w} must be a multiple of head_dim {self.head_dim}")
        _check(self.head_dim % 8 == 0, "head_dim must be a multiple of 8 (rotary sections t, h, w)")


# ------------------------------------------------------------------------------------------ objectives
@dataclass
class ImmConfig:
    """Inductive Moment Matching (Zhou, Ermon, Song 2025); defaults are the paper's (see IMM.md)."""

    particles: int = 4  # M: images per group sharing (s, r, t)
    k: int = 12  # r-mapping: eta decrement (eta(T) - eta(eps)) / 2^k
    a: float = 2  # weighting exponent: 1 best 1-step, 2 best multi-step / low precision (any real a >= 0)
    b: float = 4.0  # weighting sigmoid bias
    t_max: float = 0.994
    t_min: float = 0.0
    min_gap: float = 1e-4
    sigma_d: float = 0.5
    kernel_weight_max: float = 1e4  # clamp of w(s, t) = 1 / ((t - s) sigma_d)
    # mmgen extension ("dim" = the paper's k = exp(-w ||a - b|| / D)): "sqrt_dim" divides by sqrt(D) instead.
    # ||a - b|| grows like sqrt(D), so the paper's exponent shrinks like 1 / sqrt(D): about 1 on 2-D targets,
    # about 0.1 on a 256-number shapes latent, where the kernel is nearly linear (see imm.laplace_mmd2)
    kernel_norm: Literal["dim", "sqrt_dim"] = "dim"
    # mmgen extension ("eta" = the paper's constant eta decrement, gap set by k): "midpoint" sets r = (t + s) / 2,
    # so a jump's target is built from jumps of half its length and the map from T to 0 is log2 doublings
    # away from the boundary instead of about 2^k decrements
    r_mapping: Literal["eta", "midpoint"] = "eta"
    # mmgen extension ("ddim" = the paper's x_r = DDIM(x_t, x, t -> r) with the data x): "model" takes the
    # network's own jump x_r = f_theta-(x_t, t, r) (no gradient; one more forward), a target that depends on x_t
    # alone: no conditional-velocity noise (t - r)(eps - x - v) in y_r
    x_r: Literal["ddim", "model"] = "ddim"
    cond_dropout: float = 0.1
    # mmgen extension ("v" = the paper's estimator, every pair i, j): "u" = the unbiased MMD^2_u (pairs i != j,
    # no self-pairs and no paired cross terms), "no_self" = self-pairs left out, every cross pair kept (see
    # imm.laplace_mmd2); "u" measured worse at N = 1 on the 2-D ring and moons and on shapes
    # (docs/inference_first.md), so not the default
    mmd: Literal["v", "u", "no_self"] = "v"
    # mmgen extension ("position" = the paper's random groups): "prompt" groups targets that share their text
    # context, so each group's MMD compares M particles of one conditional distribution (see groups.py)
    group_by: Literal["position", "prompt"] = "position"
    # mmgen extension (0 = the paper's IMM): this fraction of groups trains the flow map at its boundary
    # s = t with the flow-matching loss, since d f(x_t, t, s) / ds at s = t is the probability-flow velocity;
    # a dense signal that speeds up small-batch training without moving the IMM optimum
    boundary_fraction: float = 0.0
    boundary_weight: float = 1.0
    # "lambda" also weights each boundary group by IMM's lambda(t) (2-D ring: 2.6x worse at N = 1, level at N >= 4)
    boundary_weighting: Literal["constant", "lambda"] = "constant"
    # mmgen extension (0 = the paper's IMM from scratch): the first steps train only the boundary (flow
    # matching at s = t), which learns the velocity fast; IMM then turns it into jumps
    warm_start_steps: int = 0

    RANGES: ClassVar[dict[str, Range]] = {
        "particles": Range(1, 1024),
        "k": Range(0, 64),
        "a": Range(0, 16),
        "t_max": UNIT_OPEN,
        "t_min": UNIT_OPEN,
        "min_gap": Range(0, 1, hi_open=True),
        "sigma_d": POSITIVE,
        "kernel_weight_max": POSITIVE,
        "cond_dropout": UNIT_OPEN,
        "boundary_fraction": UNIT,
        "boundary_weight": AT_LEAST_0,
        "warm_start_steps": AT_LEAST_0,
    }

    def __post_init__(self) -> None:
        _check(self.particles >= 1, "particles must be >= 1")
        _check(0.0 <= self.boundary_fraction <= 1.0, "boundary_fraction must lie in [0, 1]")
        _check(0.0 <= self.t_min < self.t_max < 1.0, "need 0 <= t_min < t_max < 1")
        _check(0.0 <= self.cond_dropout < 1.0, "cond_dropout must lie in [0, 1)")


@dataclass
class FlowMatchingConfig:
    """Flow matching on the same interpolant (the baseline): predict v = eps - x from x_t at time t."""

    sigma_d: float = 0.5
    t_min: float = 0.0
    t_max: float = 1.0
    time_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    cond_dropout: float = 0.1

    RANGES: ClassVar[dict[str, Range]] = {"sigma_d": POSITIVE, "t_min": UNIT, "t_max": UNIT, "cond_dropout": UNIT_OPEN}

    def __post_init__(self) -> None:
        _check(self.t_min < self.t_max, f"need t_min < t_max, got {self.t_min} and {self.t_max}")


@dataclass
class DistillConfig:
    """mmgen extension, off by default: beside the image objective, regress the flow map's 1-step jump
    f(x_T, T, 0) on a frozen teacher's guided few-step sample from the same noise, so guidance and steps are
    distilled into one evaluation (mmgen/train/distill.py). The teacher is a release of the same tokenizers."""

    teacher: str = ""  # release folder ("" = off); e.g. the IMM model this run starts from
    steps: int = 4  # the teacher's sampling steps (pushforward for a flow map, Euler for flow matching)
    guidance: float = 1.0  # the teacher's guidance on G (1 = conditional only)
    time_grid: Literal["uniform", "cosine"] = "uniform"  # the teacher's time grid (SamplingOptions.time_grid)
    weight: float = 1.0  # of the per-image error, averaged over the step's targets
    # per image, on the mean squared error m (in `space`): "l2" = m; "pseudo_huber" = sqrt(m + c^2) - c (iCT's
    # pseudo-Huber on the RMS error: its minimiser leans to the targets' majority mode instead of their mean)
    loss: Literal["l2", "pseudo_huber"] = "l2"
    # where the error is measured: the normalised latent, or the pixels [-1, 1] the frozen image tokenizer's
    # decoder makes of student and teacher latents (what a viewer and the shapes judge see)
    space: Literal["latent", "pixel"] = "latent"
    huber_c: float = 0.03  # c: an absolute RMS error in the space measured (the latent, std sigma_d; or pixels)

    RANGES: ClassVar[dict[str, Range]] = {
        "steps": Range(1, 64),
        "guidance": Range(0, 100),
        "weight": AT_LEAST_0,
        "huber_c": POSITIVE,
    }


@dataclass
class ObjectiveConfig:
    image: Literal["imm", "fm"] = "imm"
    text_weight: float = 1.0
    image_weight: float = 1.0
    imm: ImmConfig = field(default_factory=ImmConfig)
    fm: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    RANGES: ClassVar[dict[str, Range]] = {"text_weight": AT_LEAST_0, "image_weight": AT_LEAST_0}


# ------------------------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    output_dir: str = "runs/shapes_tiny"
    steps: int = 2000
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 = off
    ema_decay: float = 0.999
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast where the device supports it
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the transformer blocks (worth it on a GPU; minutes of compiling on a CPU)
    log_every: int = 10
    sample_every: int = 500
    ckpt_every: int = 500
    keep_checkpoints: int = 2  # the newest ones kept; 0 = keep every checkpoint
    max_nonfinite: int = 5  # consecutive non-finite losses before training stops
    seed: int = 0
    init_from: str = ""  # a release folder whose weights start this run (e.g. an IMM run from a flow-matching one)

    # grad_clip, sample_every, ckpt_every: 0 = off (a negative ckpt_every would checkpoint every step)
    RANGES: ClassVar[dict[str, Range]] = {
        "steps": AT_LEAST_1,
        "grad_accum": Range(1, 4096),
        "lr": LEARNING_RATE,
        "min_lr_ratio": UNIT,
        "warmup_steps": AT_LEAST_0,
        "betas": UNIT_OPEN,
        "weight_decay": Range(0, 10),
        "grad_clip": AT_LEAST_0,
        "ema_decay": UNIT_OPEN,
        "log_every": AT_LEAST_1,
        "sample_every": AT_LEAST_0,
        "ckpt_every": AT_LEAST_0,
        "keep_checkpoints": AT_LEAST_0,
        "max_nonfinite": AT_LEAST_1,
        "seed": AT_LEAST_0,
    }

    def __post_init__(self) -> None:
        _check(self.steps >= 1 and self.grad_accum >= 1, "steps and grad_accum must be >= 1")
        _check(0.0 <= self.ema_decay < 1.0, "ema_decay must lie in [0, 1)")
        _check(len(self.betas) == 2, "betas must have two values")


# ------------------------------------------------------------------------------------------- sampling
# The sampling defaults, defined once: `SampleConfig` (the trainer's sample grids), `SamplingOptions` (the
# pipeline) and the scripts' flags read them; their ranges are `SampleConfig.RANGES`, checked by load_config and
# by `SamplingOptions.validate`. w = 1.5 was the IMM paper's best guidance on ImageNet, at 1 step too.
STEPS = 4  # network evaluations per image
GUIDANCE = 1.5
TIME_GRID = "uniform"  # IMM's default; "cosine" spends more steps near the data end
TIME_GRIDS = ("uniform", "cosine")


@dataclass
class SampleConfig:
    """The trainer's sample grids: images of the EMA model for fixed prompts, every `train.sample_every` steps."""

    prompts: list[str] = field(default_factory=lambda: ["a large red circle", "a small blue square"])
    steps: int = STEPS
    guidance: float = GUIDANCE
    seed: int = 0

    # the ranges of every sampling option (the text ones for `SamplingOptions.validate`; no field here has them)
    RANGES: ClassVar[dict[str, Range]] = {
        "steps": Range(1, MAX_SAMPLER_STEPS),
        "guidance": Range(0, 20),
        "seed": AT_LEAST_0,
        "max_new_tokens": AT_LEAST_0,
        "temperature": Range(0, 100),
        "top_k": AT_LEAST_0,
        "top_p": Range(0, 1, lo_open=True),
    }
    # keys that no code read (the grids decode no text), dropped when a config is loaded: the run_config.yaml
    # of a release made before their removal (releases/shapes) still loads
    RETIRED: ClassVar[tuple[str, ...]] = ("max_new_tokens", "temperature", "top_k", "top_p")


@dataclass
class RunConfig:
    """A training run (`configs/train/*.yaml`)."""

    text_tokenizer: str = "tokenizers/text/shapes.yaml"  # recipe (trained when missing) or a saved folder
    image_tokenizer: str = "tokenizers/image/shapes_kl.yaml"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
