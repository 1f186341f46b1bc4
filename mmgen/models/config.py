"""`MMGenConfig`: the backbone's `transformers` config (config.json), resolved from the user-facing `ModelConfig`.

`ARCHITECTURE` lists what must match for weights to be interchangeable; `attention` (the backend) is how, not
what, the model computes. The model itself is `mmgen.models.model.MMGenModel`, which re-exports this class.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from mmgen.config import ModelConfig
from mmgen.flowmap import default_time_range
from mmgen.models.layers import mlp_hidden


def _time_range(image_objective: str, t_min: float | None, t_max: float | None) -> tuple[float, float]:
    """(t_min, t_max), each None taken from the objective's default range."""
    default_min, default_max = default_time_range(image_objective)
    return (default_min if t_min is None else t_min), (default_max if t_max is None else t_max)


def _validate(c: MMGenConfig) -> None:
    if c.width % c.head_dim:
        raise ValueError(f"width {c.width} must be a multiple of head_dim {c.head_dim}")
    if c.experts not in ("mot", "dense"):
        raise ValueError(f"experts must be 'mot' or 'dense', got {c.experts!r}")
    if not 0.0 <= c.t_min < c.t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min {c.t_min} and t_max {c.t_max}")


class MMGenConfig(PretrainedConfig):
    """t_min, t_max: the times the model was trained on (mmgen.flowmap.time_range), which it samples between; a
    config.json without the keys predates them and gets the objective's defaults (t_max 0.994 for imm, 1.0 for
    fm; t_min 0)."""

    model_type = "mmgen"

    def __init__(
        self,
        vocab_size: int = 384,
        depth: int = 4,
        width: int = 128,
        head_dim: int = 32,
        mlp_hidden: int = 352,
        experts: str = "mot",
        qk_norm: bool = True,
        image_adaln: bool = True,
        latent_channels: int = 4,
        patch_size: int = 2,
        image_grid: tuple[int, int] | list[int] = (4, 4),
        image_size: int = 32,
        downsample: int = 4,
        sigma_d: float = 0.5,
        image_objective: str = "imm",
        t_min: float | None = None,
        t_max: float | None = None,
        rope_theta: float = 10000.0,
        time_freq_dim: int = 256,
        time_input: str = "stride",  # a config.json without the key predates the option: stride
        image_pos_embed: bool = False,  # a config.json without the key predates the option: none
        max_seq_len: int = 256,
        init_std: float = 0.02,
        init_image_from_text: bool = False,
        attention: str = "auto",
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        pad_token_id: int = 3,
        boi_token_id: int = 4,
        eoi_token_id: int = 5,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.depth = depth
        self.width = width
        self.head_dim = head_dim
        self.mlp_hidden = mlp_hidden
        self.experts = experts
        self.qk_norm = qk_norm
        self.image_adaln = image_adaln
        self.latent_channels = latent_channels
        self.patch_size = patch_size
        self.image_grid = list(image_grid)
        self.image_size, self.downsample = image_size, downsample  # pixels, and pixels per latent position
        self.sigma_d = sigma_d
        self.image_objective = image_objective
        self.t_min, self.t_max = _time_range(image_objective, t_min, t_max)
        self.rope_theta = rope_theta
        self.time_freq_dim = time_freq_dim
        self.time_input = time_input
        self.image_pos_embed = image_pos_embed
        self.max_seq_len = max_seq_len
        self.init_std, self.init_image_from_text = init_std, init_image_from_text  # how the weights start
        self.boi_token_id, self.eoi_token_id = boi_token_id, eoi_token_id  # the image delimiters
        self.attention = attention  # auto | sdpa | flex: how, not what, the model computes (not architecture)
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)
        _validate(self)

    ARCHITECTURE = (
        "vocab_size",
        "depth",
        "width",
        "head_dim",
        "mlp_hidden",
        "experts",
        "qk_norm",
        "image_adaln",
        "latent_channels",
        "patch_size",
        "image_grid",
        "image_size",
        "downsample",
        "sigma_d",
        "image_objective",
        "rope_theta",
        "time_freq_dim",
        "time_input",
        "image_pos_embed",
        "max_seq_len",
    )

    def architecture(self) -> dict:
        """What must match for weights to be interchangeable (a checkpoint of another model differs here)."""
        return {k: getattr(self, k) for k in self.ARCHITECTURE}

    @property
    def n_heads(self) -> int:
        return self.width // self.head_dim

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.latent_channels

    @property
    def image_tokens(self) -> int:
        return self.image_grid[0] * self.image_grid[1]

    @classmethod
    def from_model_config(
        cls,
        m: ModelConfig,
        *,
        vocab_size: int,
        latent_channels: int,
        image_size: int,
        downsample: int,
        seq_len: int,
        sigma_d: float,
        image_objective: str,
        special_ids: dict[str, int],
        t_min: float | None = None,
        t_max: float | None = None,
    ) -> MMGenConfig:
        """Resolve the user-facing dial (`ModelConfig`, zeros = derive) against the data and tokenizers; the
        time range is the objective's (`mmgen.flowmap.time_range`; None = the objective's default)."""
        width = m.width or m.depth * m.aspect_ratio
        lat = image_size // downsample
        if image_size % downsample or lat % m.patch_size:
            raise ValueError(
                f"image_size {image_size} must be divisible by the tokenizer's downsampling {downsample} times "
                f"model.patch_size {m.patch_size}"
            )
        return cls(
            vocab_size=m.vocab_size or vocab_size,
            depth=m.depth,
            width=width,
            head_dim=m.head_dim,
            mlp_hidden=mlp_hidden(width, m.mlp_ratio),
            experts=m.experts,
            qk_norm=m.qk_norm,
            image_adaln=m.image_adaln,
            latent_channels=m.latent_channels or latent_channels,
            patch_size=m.patch_size,
            image_grid=(lat // m.patch_size, lat // m.patch_size),
            image_size=image_size,
            downsample=downsample,
            sigma_d=sigma_d,
            image_objective=image_objective,
            t_min=t_min,
            t_max=t_max,
            rope_theta=m.rope_theta,
            time_freq_dim=m.time_freq_dim,
            time_input=m.time_input,
            image_pos_embed=m.image_pos_embed,
            max_seq_len=m.max_seq_len or seq_len,
            init_std=m.init_std,
            init_image_from_text=m.init_image_from_text,
            attention=m.attention,
            **{f"{name}_token_id": special_ids[name] for name in ("bos", "eos", "pad", "boi", "eoi")},
        )
