"""MD4 masked diffusion (mmgen/objectives/masked_diffusion.py), the exact sampler distribution
(mmgen/experiments/md_exact.py) and the autoregressive helpers, against analytic answers and sampling."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmgen.experiments.autoregressive import ar_log_prob, ar_sample
from mmgen.experiments.md_exact import sampler_probs
from mmgen.experiments.tiny_transformer import TinyTransformer
from mmgen.experiments.tuples import conditionals, get_data, kl_from_support, poker
from mmgen.objectives.masked_diffusion import (
    MaskedDiffusionConfig,
    mask_tokens,
    md_loss,
    sample,
    time_grid,
    unmask_counts,
)


def oracle_net(data, mask_id):
    """Logits of the Bayes-optimal denoiser (what perfect training reaches)."""
    return lambda z: conditionals(data, z, mask_id).clamp_min(1e-30).log().float()


def test_time_grid_and_counts():
    for kind in ("cosine", "uniform"):
        for L in (1, 2, 5):
            t = time_grid(L, kind)
            assert t.shape == (L + 1,) and float(t[0]) == 1.0 and float(t[-1]) == 0.0
            assert (t[1:] < t[:-1]).all()
    assert torch.allclose(time_grid(2, "cosine"), torch.tensor([1.0, math.cos(math.pi / 4), 0.0], dtype=torch.float64))
    assert unmask_counts(8, time_grid(8, "uniform")) == [1] * 8
    assert unmask_counts(8, time_grid(1, "cosine")) == [8]
    assert sum(unmask_counts(7, time_grid(3, "cosine"))) == 7
    with pytest.raises(ValueError, match="steps"):
        time_grid(0)
    with pytest.raises(ValueError, match="grid"):
        time_grid(2, "linear")  # type: ignore[arg-type]


def test_mask_rate_is_one_minus_alpha():
    x = torch.zeros(400, 500, dtype=torch.long)
    t = torch.full((400,), 0.3)
    z, masked = mask_tokens(x, t, 9, torch.Generator().manual_seed(0))
    assert abs(float(masked.float().mean()) - 0.3) < 0.005
    assert torch.equal(z == 9, masked)


def test_loss_of_perfect_denoiser_is_the_data_entropy():
    """E_t[(1/t) sum_masked -log p(x_n | z_t)] = H(x) for the exact conditionals: checks the 1/t weight and
    that only masked positions count (any other weight or set of positions gives another number)."""
    data = poker()
    V = len(data.vocab)
    cfg = MaskedDiffusionConfig(mask_id=V)
    g = torch.Generator().manual_seed(1)
    losses = [md_loss(oracle_net(data, V), data.sample(20000, g), cfg, g)[0] for _ in range(5)]
    assert abs(float(torch.stack(losses).mean()) - math.log(6)) < 0.02, losses


def test_loss_ignores_visible_positions_and_rejects_a_mask_logit():
    data = poker()
    V = len(data.vocab)
    cfg = MaskedDiffusionConfig(mask_id=V)
    x = data.sample(512, torch.Generator().manual_seed(2))
    base = oracle_net(data, V)

    def noisy_on_visible(z):  # garbage logits wherever the token is visible
        out = base(z)
        return torch.where((z != V)[..., None], torch.randn_like(out) * 50, out)

    a = md_loss(base, x, cfg, torch.Generator().manual_seed(3))[0]
    b = md_loss(noisy_on_visible, x, cfg, torch.Generator().manual_seed(3))[0]
    assert torch.allclose(a, b)
    with pytest.raises(ValueError, match="MASK"):
        md_loss(base, x, MaskedDiffusionConfig(mask_id=V - 1), torch.Generator().manual_seed(3))


def test_one_step_samples_the_product_of_marginals():
    data = poker()
    V = len(data.vocab)
    x = sample(oracle_net(data, V), 20000, 2, 1, V, generator=torch.Generator().manual_seed(4))
    assert (x < V).all()
    valid = float(data.is_valid(x).float().mean())
    assert abs(valid - 10 / 36) < 0.015, valid  # not the data's 100%
    pm = data.product_of_marginals()
    assert math.isclose(pm["valid"], 10 / 36) and abs(pm["kl"] - 1.3297) < 1e-3
    count = sample(oracle_net(data, V), 4000, 2, 2, V, unmask="count", generator=torch.Generator().manual_seed(5))
    assert bool(data.is_valid(count).all())  # one token per step with the exact conditionals: always valid


def test_revealed_tokens_are_never_changed():
    calls = []
    V, N = 5, 6

    def net(z):
        calls.append(z.clone())
        return torch.randn(*z.shape, V)

    sample(net, 64, N, 4, V, grid="uniform", generator=torch.Generator().manual_seed(6))
    for a, b in zip(calls[:-1], calls[1:]):
        kept = a != V
        assert torch.equal(b[kept], a[kept])
        assert (b == V).sum() <= (a == V).sum()


@pytest.mark.parametrize(
    "grid,unmask,steps", [("cosine", "random", 2), ("uniform", "random", 3), ("cosine", "count", 2)]
)
def test_exact_sampler_distribution_matches_sampling(grid, unmask, steps):
    """For an arbitrary (random) network on 3 tokens over 3 symbols, the exact probabilities of all 27 tuples
    sum to 1 and match the sampler's frequencies."""
    torch.manual_seed(0)
    V, N = 3, 3
    net = TinyTransformer(V + 1, V, N, width=32, depth=1, heads=2)
    with torch.no_grad():
        net.head.weight.mul_(1.5)  # far from uniform, position-dependent conditionals
    tuples = torch.tensor(list(itertools.product(range(V), repeat=N)))
    exact = sampler_probs(lambda z: torch.softmax(net(z).double(), -1), tuples, V, steps, grid, unmask)
    assert abs(float(exact.sum()) - 1.0) < 1e-6  # fp32 network: rows of one batch may differ in the last bit
    with torch.no_grad():
        x = sample(net, 40000, N, steps, V, grid, unmask, generator=torch.Generator().manual_seed(7))
    freq = (x[:, None, :] == tuples[None]).all(-1).double().mean(0)
    sd = (exact * (1 - exact) / 40000).sqrt()
    assert float(exact.max()) < 0.6 and float(exact.max()) > 5 * float(exact.min())  # far from uniform
    assert ((freq - exact).abs() <= 5 * sd + 1e-3).all(), torch.stack([exact, freq], 1)


def test_exact_validity_with_the_ideal_denoiser():
    data = poker()
    V = len(data.vocab)
    cond = lambda z: conditionals(data, z, V)  # noqa: E731
    for grid in ("cosine", "uniform"):
        for unmask in ("random", "count"):
            one = sampler_probs(cond, data.support, V, 1, grid, unmask)
            assert math.isclose(float(one.sum()), 10 / 36, rel_tol=1e-9)
    two_count = sampler_probs(cond, data.support, V, 2, "cosine", "count")
    assert math.isclose(float(two_count.sum()), 1.0, rel_tol=1e-9)
    q = 1 - math.cos(math.pi / 4)  # cosine, L = 2: first step reveals each word w.p. q
    want = 2 * q * (1 - q) + (1 - 2 * q * (1 - q)) * 10 / 36  # only one word first -> valid
    two = sampler_probs(cond, data.support, V, 2, "cosine", "random")
    assert math.isclose(float(two.sum()), want, rel_tol=1e-9)
    perm = get_data("perm4", values=5)
    pm = perm.product_of_marginals()
    assert math.isclose(pm["valid"], 5.0**-3) and math.isclose(pm["kl"], 3 * math.log(5))
    assert math.isclose(kl_from_support(perm.probs, perm.probs), 0.0, abs_tol=1e-12)


def test_autoregressive_probabilities_are_normalised_and_sampled():
    torch.manual_seed(1)
    V, N = 3, 3
    net = TinyTransformer(V + 2, V, N, width=32, depth=1, heads=2, causal=True)
    with torch.no_grad():
        net.head.weight.mul_(1.5)
    tuples = torch.tensor(list(itertools.product(range(V), repeat=N)))
    p = ar_log_prob(net, tuples, V + 1).exp()
    assert abs(float(p.sum()) - 1.0) < 1e-6
    x = ar_sample(net, 40000, N, V + 1, torch.Generator().manual_seed(8))
    freq = (x[:, None, :] == tuples[None]).all(-1).double().mean(0)
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / 40000).sqrt() + 1e-3).all()
