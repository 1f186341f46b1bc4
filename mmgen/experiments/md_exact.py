"""Exact output distribution of the masked-diffusion sampler on given tuples, with no sampling noise.

The sampler reveals positions in steps; at step i the revealed set grows from S to S u D and the tokens of D
are drawn independently from the network's categoricals given x restricted to S. So for a target tuple x

    P(sample = x) = sum over chains {} = S_0 c S_1 c ... c S_L = [N] of
                    prod_i P(S_i | S_{i-1}, step i) prod_{n in S_i minus S_{i-1}} p_theta(x_n | x_{S_{i-1}})

computed by dynamic programming over the 2^N revealed sets (3^N (S, D) pairs per step; N <= 10 or so).
The network is called once on each of the K x 2^N partially masked copies of the targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mmgen.objectives.masked_diffusion import Grid, Unmask, time_grid, unmask_counts, unmask_probability

CondProbs = Callable[[torch.Tensor], torch.Tensor]  # z [B, N] -> probabilities [B, N, V]


def _subset_pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All (S, D) bitmask pairs with S and D disjoint: two [3^n] long tensors."""
    s_list, d_list = [], []
    for s in range(1 << n):
        free = ((1 << n) - 1) & ~s
        d = free
        while True:  # every subset d of `free`, including 0
            s_list.append(s)
            d_list.append(d)
            if d == 0:
                break
            d = (d - 1) & free
    return torch.tensor(s_list), torch.tensor(d_list)


def sampler_probs(
    cond: CondProbs, targets: torch.Tensor, mask_id: int, steps: int, grid: Grid = "cosine", unmask: Unmask = "random"
) -> torch.Tensor:
    """targets [K, N] -> [K] float64: the probability that `sample(..., steps, grid, unmask)` outputs each."""
    K, N = targets.shape
    if N > 12:
        raise ValueError(f"exact sampler probabilities enumerate 3^N subset pairs; N = {N} is too long")
    bits = (torch.arange(1 << N)[:, None] >> torch.arange(N)[None]) & 1  # [2^N, N]: 1 = revealed
    z = torch.where(bits[None].bool(), targets[:, None, :], torch.full_like(targets[:, None, :], mask_id))
    with torch.no_grad():
        probs = cond(z.reshape(-1, N)).double().reshape(K, 1 << N, N, -1)
    p_tok = probs.gather(-1, targets[:, None, :, None].expand(K, 1 << N, N, 1))[..., 0]  # [K, 2^N, N]

    S, D = _subset_pairs(N)
    d_bits = bits[D].bool()  # [P, N]
    emit = torch.where(d_bits[None], p_tok[:, S, :], torch.ones(())).prod(-1)  # [K, P]
    n_free = N - bits[S].sum(-1)  # masked positions before the step
    n_new = d_bits.sum(-1)

    times = time_grid(steps, grid)
    counts = unmask_counts(N, times)
    P = torch.zeros(K, 1 << N, dtype=torch.float64)
    P[:, 0] = 1.0
    for i in range(steps):
        if unmask == "random":
            q = unmask_probability(float(times[i]), float(times[i + 1]))
            trans = q**n_new * (1.0 - q) ** (n_free - n_new)  # torch: 0 ** 0 = 1
        elif unmask == "count":
            choose = torch.tensor([math.comb(int(f), counts[i]) if counts[i] <= f else 1 for f in n_free])
            trans = torch.where(n_new == counts[i], 1.0 / choose.double(), torch.zeros((), dtype=torch.float64))
        else:
            raise ValueError(f"unknown unmasking rule {unmask!r}: random or count")
        new = torch.zeros_like(P)
        new.index_add_(1, S | D, P[:, S] * emit * trans.double())
        P = new
    return P[:, (1 << N) - 1]
