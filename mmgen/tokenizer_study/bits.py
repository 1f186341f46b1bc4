"""Bit accounting of a token: how many input bits one token stands for, how many it can hold.

    bits in  = pixels per token x image channels x bit depth            (4x8x8 video token, RGB, 8 bit: 6144)
    bits out = continuous: latent channels x dtype bits                 (8 bfloat16 channels: 128)
               VQ: codebooks x log2(codebook size)                      (32768 codes: 15)
               FSQ: sum over channels of log2(levels)                   ([8,8,8,5,5,5]: 15.97)
    bit compression = bits in / bits out                                (409.6 and 48 for the two above)

"Bits out" is a capacity. What a trained discrete tokenizer actually uses is the entropy of its code
frequencies (`effective_bits`, from `metrics.code_usage`); a continuous latent quantised to k bits per
channel holds channels x k bits (`KBitQuantizer` in `kbit.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenBits:
    name: str
    kind: str  # "continuous", "vq" or "fsq"
    downsample: int  # f: spatial side of the pixel patch behind one token
    frames: int = 1  # temporal extent of the token (video tokenizers)
    latent_channels: int = 0  # continuous: channels per token
    dtype_bits: int = 16  # continuous: bits per channel (bfloat16 = 16; k for a k-bit quantised latent)
    codebook_size: int = 0  # vq: K
    codebooks: int = 1  # vq: independent codebooks per token (residual / grouped VQ)
    levels: tuple[int, ...] = field(default_factory=tuple)  # fsq
    image_channels: int = 3
    bit_depth: int = 8
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("continuous", "vq", "fsq"):
            raise ValueError(f"kind must be continuous, vq or fsq, got {self.kind!r}")
        if self.kind == "continuous" and (self.latent_channels < 1 or self.dtype_bits < 1):
            raise ValueError(f"{self.name}: a continuous token needs latent_channels >= 1 and dtype_bits >= 1")
        if self.kind == "vq" and self.codebook_size < 2:
            raise ValueError(f"{self.name}: a VQ token needs codebook_size >= 2")
        if self.kind == "fsq" and (not self.levels or min(self.levels) < 2):
            raise ValueError(f"{self.name}: an FSQ token needs levels >= 2 each")

    @property
    def pixels_per_token(self) -> int:
        return self.frames * self.downsample * self.downsample

    @property
    def bits_in(self) -> int:
        return self.pixels_per_token * self.image_channels * self.bit_depth

    @property
    def bits_out(self) -> float:
        if self.kind == "continuous":
            return float(self.latent_channels * self.dtype_bits)
        if self.kind == "vq":
            return self.codebooks * math.log2(self.codebook_size)
        return sum(math.log2(v) for v in self.levels)

    @property
    def compression(self) -> float:
        return self.bits_in / self.bits_out

    @property
    def codes(self) -> int:
        """Distinct tokens of a discrete tokenizer (0 for continuous)."""
        if self.kind == "vq":
            return self.codebook_size**self.codebooks
        return math.prod(self.levels) if self.kind == "fsq" else 0

    def row(self) -> dict:
        shape = (
            f"{self.frames}x{self.downsample}x{self.downsample}"
            if self.frames > 1
            else f"{self.downsample}x{self.downsample}"
        )
        if self.kind == "continuous":
            what = f"{self.latent_channels} ch x {self.dtype_bits} bit"
        elif self.kind == "vq":
            what = f"K={self.codebook_size}" + (f" x {self.codebooks}" if self.codebooks > 1 else "")
        else:
            what = f"FSQ {list(self.levels)} ({self.codes} codes)"
        return {
            "name": self.name,
            "token": shape,
            "bottleneck": what,
            "bits_in": self.bits_in,
            "bits_out": round(self.bits_out, 3),
            "compression": round(self.compression, 2),
            "note": self.note,
        }


# The design's two numbers and published tokenizers (latent dtype taken as bfloat16 for continuous ones).
PRESETS: dict[str, TokenBits] = {
    t.name: t
    for t in [
        TokenBits(
            "design-video-discrete",
            "vq",
            8,
            frames=4,
            codebook_size=32768,
            note="DESIGN.md: 4x8x8 video token, 32768 codes",
        ),
        TokenBits(
            "design-video-continuous",
            "continuous",
            8,
            frames=4,
            latent_channels=8,
            note="DESIGN.md: 4x8x8 video token, 8 bfloat16 channels",
        ),
        TokenBits("sd-vae", "continuous", 8, latent_channels=4, note="Stable Diffusion VAE, f8 c4"),
        TokenBits("flux-vae", "continuous", 8, latent_channels=16, note="FLUX.1 VAE, f8 c16"),
        TokenBits("cosmos-ci-8x8", "continuous", 8, latent_channels=16, note="Cosmos-Tokenizer-CI8x8, 16 ch"),
        TokenBits("cosmos-di-8x8", "fsq", 8, levels=(8, 8, 8, 5, 5, 5), note="Cosmos-Tokenizer-DI8x8, FSQ 64000"),
        TokenBits("llamagen-vq16", "vq", 16, codebook_size=16384, note="LlamaGen VQ16, f16, 16384 codes"),
    ]
}


def tokenizer_bits(tok, dtype_bits: int = 16, name: str = "") -> TokenBits:
    """Bit accounting of a trained `ImageTokenizer` (continuous channels counted at `dtype_bits`)."""
    r = tok.recipe
    name = name or r.name
    if tok.kind == "kl":
        return TokenBits(name, "continuous", tok.downsample, latent_channels=tok.latent_channels, dtype_bits=dtype_bits)
    if tok.kind == "vq":
        return TokenBits(name, "vq", tok.downsample, codebook_size=r.codebook_size)
    return TokenBits(name, "fsq", tok.downsample, levels=tuple(r.levels))


def effective_compression(bits: TokenBits, entropy_bits: float) -> float:
    """Bit compression counting the bits a discrete tokenizer actually uses (entropy of its code usage)."""
    if entropy_bits <= 0:
        raise ValueError(f"entropy must be > 0 bits, got {entropy_bits}")
    return bits.bits_in / entropy_bits
