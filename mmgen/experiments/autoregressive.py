"""Next-token prediction on short tuples with a causal network: the autoregressive side of the discrete study.

The network sees [BOS, x_1, ..., x_{N-1}] and predicts x_1 .. x_N: logits [B, N, V] like the masked model's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmgen.objectives.masked_diffusion import TokenNet


def shift_right(x: torch.Tensor, bos_id: int) -> torch.Tensor:
    """[B, N] -> [BOS, x_1 .. x_{N-1}]."""
    return torch.cat([torch.full_like(x[:, :1], bos_id), x[:, :-1]], dim=1)


def ar_loss(net: TokenNet, x: torch.Tensor, bos_id: int) -> torch.Tensor:
    """Negative log-likelihood per sequence (nats), averaged over the batch."""
    logits = net(shift_right(x, bos_id))
    return F.cross_entropy(logits.float().transpose(1, 2), x, reduction="none").sum(1).mean()


@torch.no_grad()
def ar_log_prob(net: TokenNet, x: torch.Tensor, bos_id: int) -> torch.Tensor:
    """log p(x) = sum_n log p(x_n | x_<n) for x [B, N]: [B] float64, exact (teacher forcing)."""
    logp = torch.log_softmax(net(shift_right(x, bos_id)).double(), dim=-1)
    return logp.gather(-1, x[..., None])[..., 0].sum(1)


@torch.no_grad()
def ar_sample(
    net: TokenNet, n: int, length: int, bos_id: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Ancestral sampling, one token per network call ([n, length]); tuples are short, so no KV cache."""
    x = torch.zeros(n, length, dtype=torch.long)
    for i in range(length):
        probs = torch.softmax(net(shift_right(x, bos_id))[:, i].float(), dim=-1)
        x[:, i] = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return x
