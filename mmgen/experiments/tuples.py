"""Discrete data sets whose validity is exact: a finite support of valid token tuples with probabilities.

poker:      two-word poker hands, uniform over {high card, one pair, two pair, full house, straight flush,
            royal flush}; the second word depends on the first, so only the joint is right.
perm{N}:    x_1 uniform over K values and x_n = pi_n(x_1) for fixed random permutations pi_n: N tokens fully
            determined by any one of them (validity of the product of marginals: K^(1 - N)).

`conditionals` is the Bayes-optimal masked denoiser of a data set (the distribution of each masked position
given the visible ones), i.e. what a perfectly trained masked-diffusion network would output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

POKER_HANDS = ["high card", "one pair", "two pair", "full house", "straight flush", "royal flush"]


@dataclass
class TupleData:
    name: str
    vocab: list[str]  # token id -> word
    support: torch.Tensor  # [K, N] long: the valid tuples
    probs: torch.Tensor  # [K] float64, sums to 1

    @property
    def length(self) -> int:
        return self.support.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = torch.multinomial(self.probs, n, replacement=True, generator=generator)
        return self.support[idx]

    def is_valid(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N] -> [B] bool: the tuple is one of the support's."""
        return (x[:, None, :] == self.support[None]).all(-1).any(-1)

    def decode(self, x: torch.Tensor) -> list[str]:
        return [" ".join(self.vocab[int(i)] for i in row) for row in x]

    def marginals(self) -> torch.Tensor:
        """[N, V] float64: q_n(v) = P(x_n = v)."""
        q = torch.zeros(self.length, len(self.vocab), dtype=torch.float64)
        for n in range(self.length):
            q[n].index_add_(0, self.support[:, n], self.probs)
        return q

    def product_of_marginals(self) -> dict[str, float]:
        """What one step of any masked sampler draws: validity sum_valid prod_n q_n(x_n) and
        KL(data || prod_n q_n) (for the two-word hands: the mutual information I(w1; w2))."""
        q = self.marginals()
        p_prod = q[torch.arange(self.length), self.support].prod(-1)  # [K]
        return {"valid": float(p_prod.sum()), "kl": kl_from_support(self.probs, p_prod)}


def kl_from_support(p_data: torch.Tensor, p_model: torch.Tensor) -> float:
    """KL(data || model) = sum_k p_data(k) log(p_data(k) / p_model(k)), which needs the model's probability
    only on the data's support (inf if the model gives a valid tuple probability 0)."""
    p_data, p_model = p_data.double(), p_model.double()
    if (p_model[p_data > 0] <= 0).any():
        return math.inf
    keep = p_data > 0
    return float((p_data[keep] * (p_data[keep].log() - p_model[keep].log())).sum())


def poker() -> TupleData:
    words: list[str] = []
    for hand in POKER_HANDS:
        for w in hand.split():
            if w not in words:
                words.append(w)
    support = torch.tensor([[words.index(w) for w in hand.split()] for hand in POKER_HANDS])
    return TupleData(
        "poker", words, support, torch.full((len(POKER_HANDS),), 1.0 / len(POKER_HANDS), dtype=torch.float64)
    )


def permutation_tuples(length: int, values: int, seed: int = 0) -> TupleData:
    """x_1 ~ U{0..K-1}, x_n = pi_n(x_1) with pi_1 = identity and pi_n fixed random permutations."""
    if length < 1 or values < 2:
        raise ValueError(f"permutation tuples need length >= 1 and values >= 2, got {length}, {values}")
    g = torch.Generator().manual_seed(seed)
    perms = [torch.arange(values)] + [torch.randperm(values, generator=g) for _ in range(length - 1)]
    support = torch.stack([p for p in perms], dim=1)  # row k: (pi_1(k), ..., pi_N(k))
    vocab = [f"v{i}" for i in range(values)]
    return TupleData(f"perm{length}", vocab, support, torch.full((values,), 1.0 / values, dtype=torch.float64))


def get_data(name: str, values: int = 8, seed: int = 0) -> TupleData:
    """'poker' or 'perm<N>' (N tokens over `values` symbols)."""
    if name == "poker":
        return poker()
    if name.startswith("perm") and name[4:].isdigit():
        return permutation_tuples(int(name[4:]), values, seed)
    raise ValueError(f"unknown tuple data set {name!r}: 'poker' or 'perm<N>' such as perm4, perm8")


def conditionals(data: TupleData, z: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Bayes-optimal denoiser: z [B, N] (mask_id where hidden) -> [B, N, V] float64 with
    P(x_n = v | visible tokens of z) under the data (uniform where z matches no valid tuple)."""
    V = len(data.vocab)
    visible = z != mask_id
    agree = ((z[:, None, :] == data.support[None]) | ~visible[:, None, :]).all(-1)  # [B, K]
    w = agree.double() * data.probs[None]  # [B, K]
    onehot = torch.nn.functional.one_hot(data.support, V).double()  # [K, N, V]
    p = torch.einsum("bk,knv->bnv", w, onehot)
    total = w.sum(-1)[:, None, None]
    return torch.where(total > 0, p / total.clamp_min(1e-300), torch.full_like(p, 1.0 / V))
