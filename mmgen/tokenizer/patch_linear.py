"""The linear patch path beside the conv trunk (recipe option `patch_linear`).

Each latent position sees its own f x f RGB patch through one linear map, and each latent vector paints its
patch back through another, added to the trunk's outputs (D = 3 f^2, pixel_unshuffle order as in
`mmgen/tokenizer_study/patches.py`):

    encode  [N, 3, H, W] -> unshuffle [N, D, h, w] -> P (1x1 conv D -> C) -> [N, C, h, w]   added to the encoder's
            first C output channels (KL: the posterior mean; VQ / FSQ: the pre-quantisation latent)
    decode  [N, C, h, w] -> Q (1x1 conv C -> D) -> [N, D, h, w] -> shuffle [N, 3, H, W]      added to the decoder's

`init_pca` makes the path the principal-component tokenizer of the patches (P = V_c with the mean as a bias,
Q = V_c^T + mean); with the trunks' output layers at zero, the whole tokenizer then starts as that linear
reference. Training fits `mmgen/tokenizer_study/train.py: init_patch_linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchLinear(nn.Module):
    def __init__(self, channels: int, downsample: int):
        super().__init__()
        self.downsample, self.dim = downsample, 3 * downsample * downsample
        self.enc = nn.Conv2d(self.dim, channels, 1)  # P: [C, D, 1, 1], bias [C]
        self.dec = nn.Conv2d(channels, self.dim, 1)  # Q: [D, C, 1, 1], bias [D]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, C, H/f, W/f]."""
        return self.enc(F.pixel_unshuffle(x, self.downsample))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] -> [N, 3, h f, w f]."""
        return F.pixel_shuffle(self.dec(z), self.downsample)

    @torch.no_grad()
    def init_pca(
        self,
        mean: torch.Tensor,
        components: torch.Tensor,
        enc_gain: torch.Tensor | None = None,
        dec_gain: torch.Tensor | None = None,
    ) -> None:
        """mean [D], orthonormal components v_i as rows [C, D], optional per-channel gains [C] (default 1):
        latent_i = (p - mean) . v_i / enc_gain_i,   p_hat = mean + sum_i latent_i dec_gain_i v_i."""
        c = components.float()
        a = torch.ones(len(c)) if enc_gain is None else enc_gain.float()
        b = torch.ones(len(c)) if dec_gain is None else dec_gain.float()
        p = c / a[:, None]  # [C, D]
        self.enc.weight.copy_(p[:, :, None, None])
        self.enc.bias.copy_(-(p @ mean.float()))
        self.dec.weight.copy_((c * b[:, None]).T[:, :, None, None])  # [D, C, 1, 1]
        self.dec.bias.copy_(mean.float())
