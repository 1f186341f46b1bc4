"""`ImageTokenizer`: encoder trunk + bottleneck + decoder trunk, saved as config.json + model.safetensors.

    tok = load_image_tokenizer("tokenizers/image/shapes_kl")   # or its recipe path shapes_kl.yaml
    z = tok.encode(pixels)          # uint8 [N, 3, H, W] or float in [-1, 1] -> float32 [N, C, H/f, W/f]
    x = tok.decode(z)               # -> float [N, 3, H, W] in [-1, 1]
    z_model = tok.normalize(z)      # (z - latent_mean) / latent_std, what the generative model trains on

`latent_mean` / `latent_std` ([C]) are measured over training crops after training and saved with the weights.
They exist for every kind; only the continuous (kl) tokenizer's are meant for a model. Training (and
`ensure_image_tokenizer`, which trains a missing artifact first) lives in `mmgen/tokenizer_study/train.py`:
this module only builds, runs, saves and loads a tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mmgen.config import ImageTokenizerRecipe, from_dict, to_dict
from mmgen.errors import MissingInput, TokenizerError
from mmgen.files import check_shapes, read_json
from mmgen.tokenizer.autoencoder import Decoder, Encoder
from mmgen.tokenizer.bottleneck import BottleneckOut, build_bottleneck
from mmgen.tokenizer.patch_linear import PatchLinear
from mmgen.tokenizer.text import resolve_artifact

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
FORMAT = "mmgen-image-tokenizer/1"


class ImageTokenizer(nn.Module):
    def __init__(self, recipe: ImageTokenizerRecipe):
        super().__init__()
        self.recipe = recipe
        self.kind: str = recipe.kind
        self.downsample: int = recipe.downsample
        self.bottleneck = build_bottleneck(recipe)
        self.latent_channels: int = self.bottleneck.channels
        trunk = dict(
            width=recipe.width, downsample=recipe.downsample, channel_mult=recipe.channel_mult, blocks=recipe.blocks
        )
        self.encoder = Encoder(self.bottleneck.in_channels, **trunk)
        self.decoder = Decoder(self.latent_channels, **trunk)
        self.register_buffer("latent_mean", torch.zeros(self.latent_channels))
        self.register_buffer("latent_std", torch.ones(self.latent_channels))
        # recipe.patch_linear: a linear f x f patch path beside both trunks (`patch_linear.py`); off = no module
        self.patch = PatchLinear(self.latent_channels, self.downsample) if recipe.patch_linear else None

    # ------------------------------------------------------------------ input checks
    def pixels_to_float(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] in [0, 255] or float in [-1, 1] -> float32 in [-1, 1], after shape checks."""
        f = self.downsample
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(
                f"image tokenizer expects pixels of shape [N, 3, H, W] with H and W multiples of {f}, "
                f"got {list(pixels.shape)}"
            )
        h, w = pixels.shape[-2:]
        if h % f or w % f:
            raise ValueError(
                f"image size {h}x{w} is not a multiple of the downsampling factor {f}: expected [N, 3, H, W] "
                f"with H and W multiples of {f} (pad or crop to {h - h % f}x{w - w % f} or {h + -h % f}x{w + -w % f})"
            )
        if pixels.dtype == torch.uint8:
            return pixels.float() / 127.5 - 1.0
        if not pixels.is_floating_point():
            raise ValueError(f"pixels must be uint8 in [0, 255] or float in [-1, 1], got dtype {pixels.dtype}")
        return pixels.float()

    def _check_latents(self, z: torch.Tensor) -> None:
        if z.dim() != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"{self.kind} tokenizer expects latents of shape [N, {self.latent_channels}, H/{self.downsample}, "
                f"W/{self.downsample}], got {list(z.shape)}"
            )

    # ------------------------------------------------------------------ the three paths
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 3, H, W] in [-1, 1] -> bottleneck input [N, in_channels, H/f, W/f]; the patch path adds to the
        first C channels (KL: the mean, not the log-variance)."""
        h = self.encoder(x)
        if self.patch is None:
            return h
        c = self.latent_channels
        return torch.cat([h[:, :c] + self.patch.encode(x), h[:, c:]], dim=1)

    def _pixels(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, C, h, w] -> unclamped pixels [N, 3, h f, w f]."""
        return self.decoder(z) if self.patch is None else self.decoder(z) + self.patch.decode(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, BottleneckOut]:
        """Training path: x float [N, 3, H, W] in [-1, 1] -> (reconstruction, bottleneck output)."""
        out = self.bottleneck(self._features(self.pixels_to_float(x)))
        return self._pixels(out.z), out

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Deterministic latents [N, C, H/f, W/f] float32 (KL: posterior mean; VQ/FSQ: code vectors)."""
        return self.bottleneck.encode(self._features(self.pixels_to_float(pixels))).float()

    def pixels(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [N, C, h, w] -> unclamped pixels [N, 3, h f, w f] with gradient to z: a loss in pixel space
        through the (frozen) decoder, e.g. objective.distill.space=pixel."""
        self._check_latents(z)
        return self._pixels(z)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [N, C, h, w] -> pixels [N, 3, h f, w f] float in [-1, 1]."""
        self._check_latents(z)
        return self._pixels(z.float()).clamp(-1.0, 1.0)

    @torch.no_grad()
    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Code ids [N, h, w] of discrete latents (VQ/FSQ)."""
        if self.kind == "kl":
            raise ValueError("a continuous (kl) tokenizer has no code indices")
        self._check_latents(z)
        return self.bottleneck.indices(z)

    @torch.no_grad()
    def rate_bits(self, pixels: torch.Tensor) -> torch.Tensor:
        """KL tokenizer: the posterior's KL to N(0, I) in bits per latent position [N, H/f, W/f]."""
        if self.kind != "kl":
            raise ValueError(f"rate_bits is defined for the continuous (kl) tokenizer, not {self.kind}")
        return self.bottleneck.rate_bits(self._features(self.pixels_to_float(pixels)))

    @torch.no_grad()
    def init_patch_pca(self, mean: torch.Tensor, components: torch.Tensor, eigenvalues: torch.Tensor) -> None:
        """Start as the principal-component tokenizer of the patches: mean [D], components [C, D] (orthonormal
        rows), their eigenvalues [C]. The patch path becomes the PCA encode / decode and the trunks' output layers
        start at zero, so the first reconstruction is the PCA one (KL, deterministic path: exactly; the sampled
        noise starts at std e^-6). VQ / FSQ get the same components with per-channel gains that keep them usable:
        FSQ scales each channel to +-2 std (tanh's near-linear range), VQ whitens them (its codes are unit
        vectors) and decodes a unit vector at the typical norm."""
        if self.patch is None:
            raise ValueError("init_patch_pca needs a recipe with patch_linear: true")
        std = eigenvalues.float().clamp(min=1e-12).sqrt()
        enc_gain = dec_gain = torch.ones_like(std)
        if self.kind == "fsq":
            b = self.bottleneck
            enc_gain = 2 * std
            dec_gain = enc_gain * (b._half_width / b._half_l).cpu()  # z = bounded / half_width ~ h half_l / half_width
        elif self.kind == "vq":
            enc_gain, dec_gain = std, std * len(std) ** 0.5  # a whitened vector has norm ~ sqrt(C)
        self.patch.init_pca(mean, components, enc_gain, dec_gain)
        for conv in (self.encoder.conv_out, self.decoder.conv_out):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        if self.kind == "kl":
            self.encoder.conv_out.bias[self.latent_channels :] = -12.0  # log-variance: posterior std e^-6

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean.view(1, -1, 1, 1)) / self.latent_std.view(1, -1, 1, 1)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std.view(1, -1, 1, 1) + self.latent_mean.view(1, -1, 1, 1)

    # ------------------------------------------------------------------ release files
    def save_pretrained(self, folder: str | Path) -> Path:
        """config.json (format, recipe, derived sizes) + model.safetensors; each written to a temp name first."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "format": FORMAT,
            "kind": self.kind,
            "downsample": self.downsample,
            "latent_channels": self.latent_channels,
            "recipe": to_dict(self.recipe),
        }
        tmp = folder / (CONFIG_NAME + ".tmp")
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        tmp.replace(folder / CONFIG_NAME)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / (WEIGHTS_NAME + ".tmp")), metadata={"format": FORMAT})
        (folder / (WEIGHTS_NAME + ".tmp")).replace(folder / WEIGHTS_NAME)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, fix: str = "") -> ImageTokenizer:
        """`fix`: what an error about a broken file tells the user to do (default: retrain from the recipe)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        fix = fix or f"copy the folder again or retrain it with `{_train_command(folder)}`"
        config = read_json(folder / CONFIG_NAME, TokenizerError, fix)
        if not isinstance(config, dict) or config.get("format") != FORMAT or "recipe" not in config:
            found = config.get("format") if isinstance(config, dict) else type(config).__name__
            raise TokenizerError(f"{folder / CONFIG_NAME} is not an mmgen image tokenizer (format {found!r}); {fix}")
        model = cls(from_dict(ImageTokenizerRecipe, config["recipe"], str(folder / CONFIG_NAME)))
        check_shapes(folder / WEIGHTS_NAME, model.state_dict(), TokenizerError, fix)
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
        return model.eval()


def _train_command(folder: Path) -> str:
    return f"python scripts/train_tokenizer.py image --recipe {folder}.yaml"


def load_image_tokenizer(folder: str | Path, fix: str = "") -> ImageTokenizer:
    """Load a folder written by `save_pretrained`; a recipe path `X.yaml` loads its artifact folder `X/`
    (`fix`: as in `ImageTokenizer.from_pretrained`)."""
    folder = resolve_artifact(folder)
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise MissingInput(
            f"no image tokenizer at {folder} ({CONFIG_NAME} + {WEIGHTS_NAME}); "
            + (fix or f"train it with `{_train_command(folder)}` (or pass a folder saved by save_pretrained)")
        )
    return ImageTokenizer.from_pretrained(folder, fix)
