"""The IMM equations (mmgen/objectives/imm.py) and the few-step samplers (mmgen/sampling/flow_map.py) against
independent references: closed-form flows, a double-loop MMD, the formulas of IMM.md."""

from __future__ import annotations

import math

import pytest
import torch

from mmgen.config import FlowMatchingConfig, ImmConfig
from mmgen.flowmap import apply_flow_map, c_in, flow_map
from mmgen.objectives.imm import laplace_mmd2, r_from_ts, sample_times, weighting
from mmgen.sampling.flow_map import sample, time_grid

SIGMA_D = 0.5


# ------------------------------------------------------------------------------------------- flow map
def test_flow_map_is_identity_at_equal_times():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 4, generator=g)
    t = torch.rand(16, generator=g)

    def net(x_in, tt, ss):  # any network: the identity must come from the parameterisation
        return torch.randn(x_in.shape, generator=g) * 10

    assert torch.equal(flow_map(x, t, t, net(x, t, t), SIGMA_D), x)
    assert torch.equal(apply_flow_map(net, x, t, t, SIGMA_D), x)
    assert not torch.allclose(apply_flow_map(net, x, t, t * 0.5, SIGMA_D), x)


# ------------------------------------------------------------------------------------------------ MMD
def mmd2_reference(
    y_t: torch.Tensor, y_r: torch.Tensor, w: torch.Tensor, unbiased: bool = False, no_self: bool = False
) -> torch.Tensor:
    """Brute force: k(a, b) = exp(-w max(||a - b||, 1e-8) / D); MMD^2 per group, the V-statistic over all
    pairs (i, j) or the U-statistic over pairs i != j."""
    G, M, D = y_t.shape
    out = []
    for g in range(G):

        def k(a, b, g=g):
            d = max(math.sqrt(sum((float(a[i]) - float(b[i])) ** 2 for i in range(D))), 1e-8)
            return math.exp(-float(w[g]) * d / D)

        pairs = [(i, j) for i in range(M) for j in range(M) if i != j or not (unbiased or no_self)]
        cross = pairs if not no_self else [(i, j) for i in range(M) for j in range(M)]
        tt = sum(k(y_t[g, i], y_t[g, j]) for i, j in pairs) / len(pairs)
        rr = sum(k(y_r[g, i], y_r[g, j]) for i, j in pairs) / len(pairs)
        tr = sum(k(y_t[g, i], y_r[g, j]) + k(y_t[g, j], y_r[g, i]) for i, j in cross) / len(cross)
        out.append(tt + rr - tr)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("unbiased", [False, True])
def test_laplace_mmd2_matches_double_loop(unbiased):
    g = torch.Generator().manual_seed(1)
    y_t = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    y_r = torch.randn(3, 4, 5, generator=g, dtype=torch.float64) + 0.3
    w = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    got = laplace_mmd2(y_t, y_r, w, "u" if unbiased else "v")
    ref = mmd2_reference(y_t, y_r, w, unbiased=unbiased)
    assert torch.allclose(got, ref, atol=1e-10), (got, ref)
    assert unbiased or (ref > 0).all()  # the U-statistic may fall below 0 on four particles
    one = laplace_mmd2(y_t[:, :1], y_r[:, :1], w, "u" if unbiased else "v")  # a group of one
    assert torch.equal(one, torch.zeros(3, dtype=torch.float64)) if unbiased else (one > 0).all()


def test_no_self_mmd2_matches_double_loop_and_keeps_the_paired_cross_terms():
    g = torch.Generator().manual_seed(5)
    y_t = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    y_r = y_t + 0.1 * torch.randn(3, 4, 5, generator=g, dtype=torch.float64)  # paired, like IMM's y_t and y_r
    w = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    got = laplace_mmd2(y_t, y_r, w, "no_self")
    assert torch.allclose(got, mmd2_reference(y_t, y_r, w, no_self=True), atol=1e-10)
    # all pairs = the M self-pairs (k = 1) + the i != j pairs, so V - no_self = (2 - a_tt - a_rr) / M with
    # a_tt + a_rr = no_self + 2 c (c: the mean cross kernel over all pairs)
    M, D = 4, 5
    c = torch.exp(-w[:, None, None] * torch.cdist(y_t, y_r) / D).mean((1, 2))
    v = laplace_mmd2(y_t, y_r, w)
    assert torch.allclose(v - got, (2 - got - 2 * c) / M, atol=1e-10)
    assert not torch.allclose(got, laplace_mmd2(y_t, y_r, w, "u"))  # the paired cross terms count


def test_unbiased_mmd2_is_centred_and_the_paper_estimator_rewards_clustered_particles():
    """Two sets drawn from one distribution: MMD^2_u averages 0, the all-pairs form 2 (1 - E k) / M > 0.
    And for fixed targets, the all-pairs form prefers particles shrunk towards their mean to particles drawn
    from the targets' own distribution; the unbiased form does not (the blur IMM shows at large strides)."""
    g = torch.Generator().manual_seed(3)
    G, M, D = 4000, 4, 8
    w = torch.full((G,), 4.0, dtype=torch.float64)
    y_t, y_r = (torch.randn(G, M, D, generator=g, dtype=torch.float64) for _ in range(2))
    u, v = laplace_mmd2(y_t, y_r, w, "u"), laplace_mmd2(y_t, y_r, w)
    assert abs(float(u.mean())) < 3 * float(u.std()) / G**0.5
    assert float(v.mean()) > 10 * float(v.std()) / G**0.5
    shrunk = 0.7 * y_t
    assert float(laplace_mmd2(shrunk, y_r, w).mean()) < float(v.mean())  # the V form rewards the shrink
    assert float(laplace_mmd2(shrunk, y_r, w, "u").mean()) > float(u.mean())  # the U form does not


def test_laplace_mmd2_zero_for_identical_sets_and_grows_with_shift():
    g = torch.Generator().manual_seed(2)
    y = torch.randn(2, 8, 6, generator=g, dtype=torch.float64)
    w = torch.tensor([1.0, 4.0], dtype=torch.float64)
    assert torch.allclose(laplace_mmd2(y, y, w), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    shifts = [0.05, 0.2, 0.5, 1.0, 3.0]
    vals = torch.stack([laplace_mmd2(y, y + d, w) for d in shifts])  # [shifts, G]
    assert (vals[0] > 0).all()
    assert (vals[1:] > vals[:-1]).all(), vals


# ------------------------------------------------------------------------------------------------ times
def r_reference(t: float, s: float, cfg: ImmConfig) -> float:
    eta = lambda u: u / (1 - u)  # noqa: E731
    dec = (eta(cfg.t_max) - eta(cfg.t_min)) / 2**cfg.k
    e = max(eta(t) - dec, 0.0)
    return max(s, min(t - cfg.min_gap, e / (1 + e)))


@pytest.mark.parametrize("k", [4, 12, 15])
def test_r_mapping_bounds_and_formula(k):
    cfg = ImmConfig(k=k)
    t, s, r = sample_times(4096, cfg, torch.Generator().manual_seed(k))
    tol = 4e-7  # fp32 rounding of t - min_gap near t = 1
    assert (t <= cfg.t_max + tol).all() and (s >= cfg.t_min).all()
    assert (s <= r + tol).all() and (r < t).all()
    assert (t - r >= cfg.min_gap - tol).all()
    ref = torch.tensor([r_reference(float(a), float(b), cfg) for a, b in zip(t, s)])
    assert torch.allclose(r, ref, atol=tol), (r - ref).abs().max()


def test_r_mapping_edge_cases():
    cfg = ImmConfig(k=2)  # large decrement: eta(T)/4 ~ 41, so r falls below s for most t
    t, s = torch.tensor([0.9, 0.5]), torch.tensor([0.3, 0.2])
    assert torch.equal(r_from_ts(t, s, cfg), s)  # clamped at s
    cfg = ImmConfig(k=30)  # tiny decrement: the minimum gap binds
    t, s = torch.tensor([0.5]), torch.tensor([0.1])
    assert torch.allclose(r_from_ts(t, s, cfg), t - cfg.min_gap)


@pytest.mark.parametrize("a", [1, 2])
def test_weighting_matches_formula(a):
    cfg = ImmConfig(a=a, b=4.0)
    ts = [0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99]

    def ref(t):
        logsnr = 2 * math.log((1 - t) / t)
        sig = 1 / (1 + math.exp(-(cfg.b - logsnr)))
        return 0.5 * sig * (2 / (t * (1 - t))) * (1 - t) ** a / ((1 - t) ** 2 + t**2)

    got = weighting(torch.tensor(ts), cfg)
    assert torch.allclose(got.double(), torch.tensor([ref(t) for t in ts], dtype=torch.float64), rtol=1e-5)


# ------------------------------------------------------------------------- samplers on analytic flows
MU, S0 = torch.tensor([0.7, -0.4]), 0.2  # data ~ N(MU, S0^2 I); S0 = 0 is a point mass


def _std(t: torch.Tensor, s0: float) -> torch.Tensor:
    return torch.sqrt((1 - t) ** 2 * s0**2 + t**2 * SIGMA_D**2)


def exact_flow(x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, s0: float) -> torch.Tensor:
    """Probability-flow map of Gaussian data: the marginal x_t ~ N(alpha_t MU, std_t^2) is rescaled to time s."""
    t, s = t[:, None], s[:, None]
    return (1 - s) * MU + _std(s, s0) / _std(t, s0) * (x_t - (1 - t) * MU)


def _x_t(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return x_in / c_in(t, SIGMA_D)[:, None]


def flow_map_net(s0: float):
    """G of the exact flow map: f = x_t - (t - s) sigma_d G."""

    def g(x_in, t, s):
        x_t = _x_t(x_in, t)
        return (x_t - exact_flow(x_t, t, s, s0)) / ((t - s)[:, None] * SIGMA_D)

    return g


def velocity_net(s0: float):
    """G of the exact one-time model: sigma_d G = E[eps - x | x_t] for Gaussian data."""

    def g(x_in, t, s):
        x_t = _x_t(x_in, t)
        tt = t[:, None]
        dev = (x_t - (1 - tt) * MU) / _std(tt, s0) ** 2
        x_hat = MU + (1 - tt) * s0**2 * dev
        eps_hat = tt * SIGMA_D**2 * dev
        return (eps_hat - x_hat) / SIGMA_D

    return g


@pytest.mark.parametrize("s0", [0.0, S0])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_pushforward_matches_exact_flow_map(s0, steps):
    noise = SIGMA_D * torch.randn(512, 2, generator=torch.Generator().manual_seed(3))
    times = time_grid(steps, 0.994, 0.0)
    got = sample(flow_map_net(s0), noise, times, SIGMA_D, "pushforward")
    want = exact_flow(noise, torch.full((512,), 0.994), torch.zeros(512), s0)
    assert torch.allclose(got, want, atol=1e-5)
    if s0 > 0:  # and the output has the data's law
        assert torch.allclose(got.mean(0), MU, atol=0.05) and abs(float(got.std(0).mean()) - s0) < 0.02


def test_one_euler_step_of_exact_one_time_model_returns_the_mean():
    """The capacity argument: from pure noise one step of even the exact E[x | x_t] model lands on E[x]."""
    noise = SIGMA_D * torch.randn(256, 2, generator=torch.Generator().manual_seed(4))
    one = sample(velocity_net(S0), noise, time_grid(1, 1.0, 0.0), SIGMA_D, "euler")
    assert torch.allclose(one, MU.expand(256, 2), atol=1e-5)
    many = sample(velocity_net(S0), noise, time_grid(400, 1.0, 0.0), SIGMA_D, "euler")  # integrates the ODE
    exact = exact_flow(noise, torch.ones(256), torch.zeros(256), S0)
    assert torch.allclose(many, exact, atol=5e-3)  # Euler error O(1 / steps)
    # point mass: straight paths, Euler is exact at any N
    for n in (1, 3):
        pm = sample(velocity_net(0.0), noise, time_grid(n, 1.0, 0.0), SIGMA_D, "euler")
        assert torch.allclose(pm, MU.expand(256, 2), atol=1e-5)


def test_time_grid():
    for kind in ("uniform", "cosine"):
        for n in (1, 2, 7):
            g = time_grid(n, 0.994, 0.01, kind)
            assert g.shape == (n + 1,) and g.dtype == torch.float32
            assert math.isclose(float(g[0]), 0.994, rel_tol=1e-6) and math.isclose(float(g[-1]), 0.01, rel_tol=1e-6)
            assert (g[1:] < g[:-1]).all()
    c = time_grid(4, 1.0, 0.0, "cosine")
    assert float(c[-2]) < 0.25  # cosine spends more steps near the data end
    for bad in (0, -1):
        with pytest.raises(ValueError, match="steps"):
            time_grid(bad)
    with pytest.raises(ValueError, match="grid"):
        time_grid(2, kind="log")
    with pytest.raises(ValueError, match="sampler"):
        sample(flow_map_net(0.0), torch.zeros(2, 2), time_grid(1), SIGMA_D, "heun")  # type: ignore[arg-type]


# ---------------------------------------------------------------- training: the real losses on the ring
def _train_and_score(steps: int, seed: int = 0) -> tuple[float, float]:
    """1-step energy distance to the 8-Gaussian ring of IMM (pushforward) and flow matching (Euler), same net."""
    from mmgen.experiments.fit import FitConfig, fit
    from mmgen.experiments.metrics import energy_distance
    from mmgen.experiments.mlp2d import TimeMLP
    from mmgen.experiments.targets2d import ring8
    from mmgen.objectives.flow_matching import fm_loss
    from mmgen.objectives.imm import imm_loss

    icfg, fcfg = ImmConfig(), FlowMatchingConfig()
    fit_cfg = FitConfig(steps=steps, lr=1e-3, warmup=min(200, steps // 5))
    g = torch.Generator().manual_seed(seed)
    y = ring8(2000, torch.Generator().manual_seed(seed + 1))
    noise = SIGMA_D * torch.randn(2000, 2, generator=torch.Generator().manual_seed(seed + 2))
    out = []
    for loss, method, t_max in ((imm_loss, "pushforward", icfg.t_max), (fm_loss, "euler", fcfg.t_max)):
        torch.manual_seed(seed)
        cfg = icfg if loss is imm_loss else fcfg
        model, _ = fit(TimeMLP(), lambda m, _, loss=loss, cfg=cfg: loss(m, ring8(256, g), cfg, g)[0], fit_cfg)
        out.append(energy_distance(sample(model, noise, time_grid(1, t_max, 0.0), SIGMA_D, method), y))
    return out[0], out[1]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.usefixtures("one_thread")
def test_imm_one_step_beats_flow_matching_fast():
    imm_ed, fm_ed = _train_and_score(steps=500)
    assert fm_ed > 0.1, fm_ed  # one Euler step of a one-time model lands near the mean (0.73 for the exact one)
    assert imm_ed < 0.05 and imm_ed * 8 < fm_ed, (imm_ed, fm_ed)  # measured: ~0.01 vs ~0.3


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_imm_one_step_beats_flow_matching_10x():
    imm_ed, fm_ed = _train_and_score(steps=3000)
    assert imm_ed < 0.03 and imm_ed * 10 < fm_ed, (imm_ed, fm_ed)


def test_boundary_weighting_lambda_scales_each_boundary_group_by_lambda_t():
    """imm.boundary_weighting = lambda: a boundary group's flow-matching loss is weighted by lambda(t) (times
    imm.boundary_weight). With every group on the boundary, the loss equals the weighted mean of the group
    losses recomputed by hand from the same random stream."""
    from mmgen.flowmap import c_in, expand_as, interpolate
    from mmgen.objectives.imm import boundary_weight, imm_loss, sample_times, weighting

    t = torch.tensor([0.1, 0.5, 0.9])
    lam = ImmConfig(boundary_weight=0.5, boundary_weighting="lambda")
    assert torch.equal(boundary_weight(t, ImmConfig(boundary_weight=0.5)), torch.full((3,), 0.5))
    assert torch.allclose(boundary_weight(t, lam), 0.5 * weighting(t, lam))

    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2)
    x = torch.randn(16, 2)  # 4 groups of M = 4

    def g(a, tt, ss):
        return net(a) * (1 + tt[:, None])

    every = dict(boundary_fraction=1.0, boundary_weight=0.5)
    with torch.no_grad():
        losses = {
            k: imm_loss(g, x, ImmConfig(**every, boundary_weighting=k), torch.Generator().manual_seed(1))[0]
            for k in ("constant", "lambda")
        }
        gen = torch.Generator().manual_seed(1)  # the same draws, in imm_loss's order: times, then noise
        tg = sample_times(4, ImmConfig(), gen)[0]
        eps = torch.randn(x.shape, generator=gen) * 0.5
        tt = tg.repeat_interleave(4)
        x_t = interpolate(x, eps, tt)
        fm = (g(expand_as(c_in(tt, 0.5), x_t) * x_t, tt, tt) - (eps - x) / 0.5).pow(2).reshape(4, -1).mean(1)
    assert torch.allclose(losses["constant"], (0.5 * fm).mean())
    assert torch.allclose(losses["lambda"], (0.5 * weighting(tg, lam) * fm).mean())


def test_imm_mmd_option_selects_the_estimator_in_group_loss():
    from mmgen.objectives.imm import group_loss, kernel_weight

    g = torch.Generator().manual_seed(4)
    y_t, y_r = torch.randn(3, 4, 2, 4, 4, generator=g), torch.randn(3, 4, 2, 4, 4, generator=g)  # [G, M, C, h, w]
    t, s = torch.tensor([0.9, 0.5, 0.3]), torch.tensor([0.1, 0.2, 0.25])
    for mmd in ("v", "u", "no_self"):
        cfg = ImmConfig(mmd=mmd)
        want = weighting(t, cfg) * laplace_mmd2(y_t.flatten(2), y_r.flatten(2), kernel_weight(t, s, cfg), mmd)
        assert torch.allclose(group_loss(y_t, y_r, t, s, cfg), want)
    assert not torch.allclose(group_loss(y_t, y_r, t, s, ImmConfig(mmd="u")), group_loss(y_t, y_r, t, s, ImmConfig()))
    with pytest.raises(ValueError, match="unknown MMD estimator 'w'"):
        laplace_mmd2(y_t.flatten(2), y_r.flatten(2), torch.ones(3), "w")


def test_kernel_norm_sqrt_dim_is_the_paper_kernel_with_w_scaled_by_sqrt_d():
    """exp(-w ||a - b|| / sqrt(D)) = exp(-(w sqrt(D)) ||a - b|| / D): the option only rescales the exponent, and
    group_loss reads it from imm.kernel_norm."""
    from mmgen.objectives.imm import group_loss, kernel_weight

    g = torch.Generator().manual_seed(5)
    y_t, y_r = torch.randn(3, 4, 2, 4, 4, generator=g), torch.randn(3, 4, 2, 4, 4, generator=g)  # D = 32
    t, s = torch.tensor([0.9, 0.5, 0.3]), torch.tensor([0.1, 0.2, 0.25])
    w = kernel_weight(t, s, ImmConfig())
    a, b = y_t.flatten(2), y_r.flatten(2)
    assert torch.allclose(laplace_mmd2(a, b, w, norm="sqrt_dim"), laplace_mmd2(a, b, w * 32**0.5))
    cfg = ImmConfig(kernel_norm="sqrt_dim")
    assert torch.allclose(group_loss(y_t, y_r, t, s, cfg), weighting(t, cfg) * laplace_mmd2(a, b, w * 32**0.5))
    with pytest.raises(ValueError, match="unknown kernel norm 'd'"):
        laplace_mmd2(a, b, w, norm="d")


def test_r_mapping_midpoint_halves_the_jump():
    cfg = ImmConfig(r_mapping="midpoint")
    t, s, r = sample_times(4096, cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(r, torch.maximum(s, torch.minimum(t - cfg.min_gap, (t + s) / 2)))
    assert (s <= r).all() and (r <= t - cfg.min_gap + 1e-7).all()
    fixed = r_from_ts(torch.tensor([0.9, 0.3, 0.5]), torch.tensor([0.1, 0.0, 0.49995]), cfg)
    torch.testing.assert_close(fixed, torch.tensor([0.5, 0.15, 0.49995]))  # the last: r = s (gap below min_gap)


def test_x_r_model_takes_the_target_from_the_networks_own_jump():
    """imm_loss with imm.x_r = model equals the loss rebuilt by hand with y_r = f(f(x_t, t, r), r, s)."""
    from mmgen.experiments.mlp2d import TimeMLP
    from mmgen.flowmap import apply_flow_map, flow_map, interpolate, network_input
    from mmgen.objectives.imm import group_loss, imm_loss

    torch.manual_seed(0)
    net = TimeMLP(2, 32, 2)
    x = torch.randn(16, 2)
    cfg = ImmConfig(x_r="model", r_mapping="midpoint")
    loss, _ = imm_loss(net, x, cfg, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t, s, r = (v.repeat_interleave(4) for v in sample_times(4, cfg, g))
    eps = torch.randn(x.shape, generator=g) * cfg.sigma_d
    x_t = interpolate(x, eps, t)
    y_t = flow_map(x_t, t, s, net(network_input(x_t, t, cfg.sigma_d), t, s), cfg.sigma_d)
    with torch.no_grad():
        y_r = apply_flow_map(net, apply_flow_map(net, x_t, t, r, cfg.sigma_d), r, s, cfg.sigma_d)
    want = group_loss(y_t.view(4, 4, 2), y_r.view(4, 4, 2), t[::4], s[::4], cfg).mean()
    torch.testing.assert_close(loss, want)
    assert not torch.allclose(
        loss, imm_loss(net, x, ImmConfig(r_mapping="midpoint"), torch.Generator().manual_seed(3))[0]
    )
