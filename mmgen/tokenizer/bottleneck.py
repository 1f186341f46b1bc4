"""The three bottlenecks between one encoder and one decoder: KL-Gaussian, VQ and FSQ.

Each maps encoder features h [N, in_channels, h, w] to the latent z [N, channels, h, w] that the decoder reads:

    forward(h) -> BottleneckOut(z, losses, indices)   training path (KL samples; VQ updates its codebook)
    encode(h)  -> z                                   deterministic (KL: posterior mean; VQ/FSQ: code vectors)
    indices(z) -> [N, h, w] code ids                  discrete bottlenecks only (usage, perplexity)

Losses are returned unweighted; the training objective weighs them (`mmgen/tokenizer_study/train.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class BottleneckOut:
    z: torch.Tensor  # [N, channels, h, w], what the decoder reads
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # unweighted scalar terms
    indices: torch.Tensor | None = None  # [N, h, w] code ids (discrete bottlenecks)


class KLBottleneck(nn.Module):
    """Diagonal Gaussian posterior q(z|x) = N(mean, exp(logvar)); KL to N(0, I) averaged per latent element."""

    kind = "kl"

    def __init__(self, channels: int):
        super().__init__()
        self.channels, self.in_channels = channels, 2 * channels

    def _split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward(self, h: torch.Tensor) -> BottleneckOut:
        mean, logvar = self._split(h)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if self.training else mean
        # KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1 - log s^2) / 2 per element
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
        return BottleneckOut(z, {"kl": kl})

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        return self._split(h)[0]

    def rate_bits(self, h: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) per latent position in bits [N, h, w]: the information the decoder can rely
        on through the noisy training channel, the continuous counterpart of a code's entropy."""
        mean, logvar = self._split(h)
        return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(dim=1) / math.log(2.0)


class VQBottleneck(nn.Module):
    """Vector quantisation with low-dimensional L2-normalised codes (ViT-VQGAN / LlamaGen recipe).

    Against codebook collapse: codes live on the unit sphere of a small `code_dim`, so nearest = largest
    cosine; the codebook follows an EMA of the vectors assigned to each code (no codebook gradient); and a
    code that no vector chose for `dead_code_steps` training steps is moved onto a random vector of the batch.
    The encoder is pulled towards its codes by the commitment loss ||z - sg(e)||^2; gradients pass the
    quantiser straight through.
    """

    kind = "vq"

    def __init__(self, codebook_size: int, code_dim: int, decay: float = 0.99, dead_code_steps: int = 50):
        super().__init__()
        self.channels = self.in_channels = code_dim
        self.codebook_size, self.decay, self.dead_code_steps = codebook_size, decay, dead_code_steps
        # EMA of the sum of vectors assigned to each code; its direction is the code.
        self.register_buffer("ema_sum", F.normalize(torch.randn(codebook_size, code_dim), dim=1))
        self.register_buffer("last_used", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def codebook(self) -> torch.Tensor:
        return F.normalize(self.ema_sum, dim=1)  # [K, code_dim]

    def _nearest(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z [N, d, h, w] (unit vectors) -> (indices [N, h, w], codes [N, d, h, w])."""
        n, d, hh, ww = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        book = self.codebook
        idx = torch.cat([(chunk @ book.T).argmax(dim=1) for chunk in flat.split(8192)])  # bounded memory
        codes = book[idx].view(n, hh, ww, d).permute(0, 3, 1, 2)
        return idx.view(n, hh, ww), codes

    def forward(self, h: torch.Tensor) -> BottleneckOut:
        z = F.normalize(h, dim=1)
        idx, codes = self._nearest(z)
        if self.training:
            self._update(z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]), idx.reshape(-1))
        commitment = F.mse_loss(z, codes.detach())
        z_q = z + (codes - z).detach()  # straight-through: forward uses the code, backward the encoder output
        return BottleneckOut(z_q, {"commitment": commitment}, idx)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        """EMA step on the assigned vectors, then restart codes unused for `dead_code_steps` steps."""
        self.step += 1
        if self.step.item() == 1:  # data-dependent start: as many codes as the batch has vectors
            self._restart(torch.arange(self.codebook_size, device=flat.device), flat)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, flat)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        self.last_used[idx] = self.step
        dead = (self.step - self.last_used >= self.dead_code_steps).nonzero().squeeze(1)
        if dead.numel():
            self._restart(dead, flat)

    def _restart(self, codes: torch.Tensor, flat: torch.Tensor) -> None:
        take = min(codes.numel(), flat.shape[0])
        codes = codes[torch.randperm(codes.numel(), device=flat.device)[:take]]
        vectors = flat[torch.randperm(flat.shape[0], device=flat.device)[:take]]
        live = self.ema_sum.norm(dim=1)
        # the magnitude of a typical code's EMA sum, so a restarted code is neither frozen nor erratic
        scale = live.median() if self.step.item() > 1 else torch.ones((), device=flat.device)
        self.ema_sum[codes] = vectors * scale
        self.last_used[codes] = self.step

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        return self._nearest(F.normalize(h, dim=1))[1]

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        return self._nearest(F.normalize(z, dim=1))[0]


class FSQBottleneck(nn.Module):
    """Finite scalar quantisation (Mentzer et al. 2023): channel i is bounded and rounded to levels[i] values.

    The implicit codebook is the grid of prod(levels) points; codes are in [-1, 1] per channel. No codebook to
    learn, so no collapse and no auxiliary loss.
    """

    kind = "fsq"

    def __init__(self, levels: list[int], eps: float = 1e-3):
        super().__init__()
        self.levels = list(levels)
        self.channels = self.in_channels = len(levels)
        self.codebook_size = math.prod(levels)
        lv = torch.tensor(levels, dtype=torch.float32)
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_half_l", (lv - 1) * (1 - eps) / 2, persistent=False)
        self.register_buffer("_offset", (1.0 - lv % 2) * 0.5, persistent=False)  # even L: grid at half-integers
        self.register_buffer("_half_width", torch.floor(lv / 2), persistent=False)
        basis = torch.cumprod(torch.tensor([1] + list(levels[:-1]), dtype=torch.long), dim=0)
        self.register_buffer("_basis", basis, persistent=False)

    def _view(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1)

    def _quantize(self, h: torch.Tensor) -> torch.Tensor:
        half_l, offset = self._view(self._half_l), self._view(self._offset)
        # tan, as in the reference implementation: ~atanh for small arguments, and finite for L = 2
        shift = torch.tan(offset / half_l)
        bounded = torch.tanh(h + shift) * half_l - offset  # in (-L/2, L/2): rounds to exactly L integers
        rounded = bounded + (torch.round(bounded) - bounded).detach()  # straight-through rounding
        return rounded / self._view(self._half_width)

    def forward(self, h: torch.Tensor) -> BottleneckOut:
        z = self._quantize(h)
        return BottleneckOut(z, {}, self.indices(z))

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        return self._quantize(h)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Codes [N, C, h, w] -> ids [N, h, w] in [0, prod(levels))."""
        hw = self._view(self._half_width)
        digits = torch.round(z * hw + hw).long()  # [0, L_i - 1] per channel
        return (digits * self._view(self._basis)).sum(dim=1)

    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Inverse of `indices`: ids [...] -> codes [..., C]."""
        digits = (indices.unsqueeze(-1) // self._basis) % self._levels.long()
        return (digits - self._half_width) / self._half_width


def build_bottleneck(recipe) -> KLBottleneck | VQBottleneck | FSQBottleneck:
    """The bottleneck an `ImageTokenizerRecipe` names."""
    if recipe.kind == "kl":
        return KLBottleneck(recipe.latent_channels)
    if recipe.kind == "vq":
        return VQBottleneck(recipe.codebook_size, recipe.code_dim, recipe.ema_decay, recipe.dead_code_steps)
    if recipe.kind == "fsq":
        return FSQBottleneck(recipe.levels)
    raise ValueError(f"unknown tokenizer kind {recipe.kind!r}; use kl, vq or fsq")
