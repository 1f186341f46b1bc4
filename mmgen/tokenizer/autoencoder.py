"""The convolutional encoder/decoder trunk shared by every image tokenizer (only the bottleneck differs).

    Encoder: pixels [N, 3, H, W] -> features [N, out_channels, H/f, W/f]
    Decoder: latents [N, in_channels, H/f, W/f] -> pixels [N, 3, H, W] (unbounded; the loss pulls them to [-1, 1])

Level i runs at resolution / 2^i with `width * channel_mult[i]` channels; there are log2(f) stride-2 steps.
The norm is a per-pixel LayerNorm over channels rather than GroupNorm: its statistics do not depend on the
image size, so a trunk trained on 64-px crops behaves the same on a 768x512 photograph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def level_channels(width: int, downsample: int, channel_mult: list[int] | None = None) -> list[int]:
    """Channels per resolution level: log2(f) + 1 entries; default multipliers min(2^i, 4)."""
    n = downsample.bit_length()  # log2(f) + 1 for a power of two
    mult = list(channel_mult) if channel_mult else [min(2**i, 4) for i in range(n)]
    assert len(mult) == n, (mult, downsample)
    return [width * m for m in mult]


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis of [N, C, H, W], independently at every pixel."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))); the second conv starts at zero, so a new block is the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1, self.conv1 = ChannelNorm(channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2, self.conv2 = ChannelNorm(channels), nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    def __init__(self, out_channels: int, width: int, downsample: int, channel_mult: list[int] | None, blocks: int):
        super().__init__()
        ch = level_channels(width, downsample, channel_mult)
        self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i in range(len(ch) - 1):
            layers += [ResBlock(ch[i]) for _ in range(blocks)]
            layers.append(nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1))  # H -> H/2
        layers += [ResBlock(ch[-1]) for _ in range(blocks)]
        self.body = nn.Sequential(*layers)
        self.norm_out = ChannelNorm(ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.body(self.conv_in(x)))))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (no checkerboard artefacts of a transposed conv)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    def __init__(self, in_channels: int, width: int, downsample: int, channel_mult: list[int] | None, blocks: int):
        super().__init__()
        ch = level_channels(width, downsample, channel_mult)
        self.conv_in = nn.Conv2d(in_channels, ch[-1], 3, padding=1)
        layers: list[nn.Module] = [ResBlock(ch[-1]) for _ in range(blocks)]
        for i in reversed(range(len(ch) - 1)):
            layers.append(Upsample(ch[i + 1], ch[i]))  # H/2^(i+1) -> H/2^i
            layers += [ResBlock(ch[i]) for _ in range(blocks)]
        self.body = nn.Sequential(*layers)
        self.norm_out = ChannelNorm(ch[0])
        self.conv_out = nn.Conv2d(ch[0], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.body(self.conv_in(z)))))
