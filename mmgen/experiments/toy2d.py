"""The continuous inference-first study: a one-time model (flow matching, sampled with Euler = DDIM on this
interpolant) against a two-time flow map (IMM, pushforward and restart samplers), same network, same budget,
on 2-D targets.

Both models are `TimeMLP`; the one-time model is always called with s = t. Beside them, the exact Bayes
one-time model of a large target sample (no training) shows that the 1-step failure is the sampler's, not
the training's: one Euler/DDIM step from pure noise lands on E[x] whatever the network.
(DDIM with x_hat = x_t - t v and eps_hat = x_t + (1 - t) v gives x_s = x_t - (t - s) v: the Euler step.)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch

from mmgen.config import FlowMatchingConfig, ImmConfig
from mmgen.config.schema import AT_LEAST_0, AT_LEAST_1, MAX_SAMPLER_STEPS, Range
from mmgen.experiments.fit import FitConfig, fit
from mmgen.experiments.metrics import energy_distance, sliced_wasserstein
from mmgen.experiments.mlp2d import TimeMLP
from mmgen.experiments.targets2d import get_target, on_checkerboard
from mmgen.flowmap import c_in, expand_as
from mmgen.models.layers import TIME_INPUTS
from mmgen.objectives.flow_matching import fm_loss
from mmgen.objectives.imm import imm_loss
from mmgen.sampling.flow_map import sample, time_grid


@dataclass
class ContinuousStudyConfig:
    targets: list[str] = field(default_factory=lambda: ["ring8", "checkerboard", "moons"])
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])  # sampler steps N
    width: int = 128
    depth: int = 3
    batch: int = 1024  # = 256 IMM groups of M = 4 (the paper: 1024 groups of 4); the same batch for flow matching
    time_input: str = "s"  # the flow map's second time: s, stride or both (see TimeEmbedding)
    fit: FitConfig = field(default_factory=FitConfig)  # 6000 steps, lr 1e-3, EMA 0.999
    # the paper's defaults (M = 4, k = 12, a = 2) with mmgen's warm start (the first half trains the boundary s = t
    # by flow matching) and a quarter of the groups on the boundary after it: the best variant measured
    # (docs/inference_first.md, "The flow map's second time and the other options")
    imm: ImmConfig = field(default_factory=lambda: ImmConfig(warm_start_steps=3000, boundary_fraction=0.25))
    fm: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    eval_samples: int = 3000  # generated and fresh target samples per metric
    eval_sets: int = 3  # fresh target sets each metric is averaged over
    noise_seeds: int = 3  # sampler noise draws per point: metrics are their mean, `energy_sd` their spread
    floor_repeats: int = 10  # independent target-vs-target pairs averaged into the noise floor
    bayes_points: int = 8000  # size of the target sample whose exact denoiser is the Bayes one-time model
    seed: int = 0

    RANGES: ClassVar[dict[str, Range]] = {
        "steps": Range(1, MAX_SAMPLER_STEPS),
        "width": Range(1, 4096),
        "depth": Range(1, 64),
        "batch": Range(1, 1 << 16),
        "eval_samples": Range(2, 1 << 20),
        "eval_sets": AT_LEAST_1,
        "floor_repeats": AT_LEAST_1,
        "bayes_points": AT_LEAST_1,
        "seed": AT_LEAST_0,
        "noise_seeds": Range(1, 100),
    }

    def __post_init__(self) -> None:
        for name in self.targets:
            get_target(name)  # raises on an unknown name
        if not self.steps or min(self.steps) < 1:
            raise ValueError(f"steps must be a non-empty list of sampler step counts >= 1, got {self.steps}")
        if self.eval_samples < 2 or self.floor_repeats < 1 or self.eval_sets < 1:
            raise ValueError("eval_samples must be >= 2, floor_repeats and eval_sets >= 1")
        if self.time_input not in TIME_INPUTS:
            raise ValueError(f"time_input must be one of {', '.join(TIME_INPUTS)}, got {self.time_input!r}")
        if self.batch % self.imm.particles:
            raise ValueError(f"batch {self.batch} must be a multiple of imm.particles={self.imm.particles}")
        if self.fm.sigma_d != self.imm.sigma_d:
            raise ValueError("fm.sigma_d and imm.sigma_d must agree: both models start from N(0, sigma_d^2)")


class BayesOneTime:
    """G of the exact one-time model of an empirical target {x_i}: E[x | x_t] is the posterior mean under
    x_t | x_i ~ N((1 - t) x_i, t^2 sigma_d^2 I), and sigma_d G = (x_t - E[x | x_t]) / t is the velocity."""

    def __init__(self, points: torch.Tensor, sigma_d: float):
        self.points, self.sigma_d = points.float(), sigma_d

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        assert bool((t == t[0]).all()), "one time per call (the samplers' convention)"
        tt = t.float().clamp_min(1e-4)
        x_t = x_in.float() / expand_as(c_in(tt, self.sigma_d), x_in)
        d2 = torch.cdist(x_t, (1 - tt[:1]) * self.points).pow(2)  # [n, P]
        w = torch.softmax(-d2 / (2 * (tt[:1] * self.sigma_d) ** 2), dim=-1)  # posterior over the points
        x_hat = w @ self.points
        return ((x_t - x_hat) / expand_as(tt, x_t) / self.sigma_d).to(x_in.dtype)


def _scores(x: torch.Tensor, fresh: list[torch.Tensor], target: str) -> dict[str, float]:
    """Metrics of x averaged over independent fresh target sets (less noise from the target side)."""
    out = {
        "energy": sum(energy_distance(x, y) for y in fresh) / len(fresh),
        "sliced_w2": sum(sliced_wasserstein(x, y) for y in fresh) / len(fresh),
    }
    if target == "checkerboard":
        out["on_support"] = float(on_checkerboard(x).double().mean())
    return out


def _mean_std(v: list[float]) -> dict[str, float]:
    t = torch.tensor(v, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if len(v) > 1 else 0.0}


# model -> (network, sampler, start time): one-time models integrate from t = 1 (pure noise); the flow map
# jumps from T = imm.t_max, pushing forward along the grid or (restart) jumping to 0 and re-noising each step
SAMPLERS = {
    "fm": ("fm", "euler"),
    "imm": ("imm", "pushforward"),
    "imm_restart": ("imm", "restart"),
    "bayes": ("bayes", "euler"),
}


def run_target(name: str, cfg: ContinuousStudyConfig) -> tuple[dict, dict[str, dict[int, torch.Tensor]]]:
    """Train both models on one target and score them at every N. Returns (results, samples per model and N)."""
    target = get_target(name)
    g = torch.Generator().manual_seed(cfg.seed)
    sigma_d = cfg.imm.sigma_d
    gf = torch.Generator().manual_seed(cfg.seed + 1000)
    fresh = [target(cfg.eval_samples, gf) for _ in range(cfg.eval_sets)]
    floor = [
        _scores(target(cfg.eval_samples, gf), [target(cfg.eval_samples, gf)], name) for _ in range(cfg.floor_repeats)
    ]
    res: dict = {"floor": {k: _mean_std([f[k] for f in floor]) for k in floor[0]}, "models": {}}

    nets = {}
    for kind in ("fm", "imm"):
        torch.manual_seed(cfg.seed)  # the same initial weights for both
        net = TimeMLP(2, cfg.width, cfg.depth, time_input=cfg.time_input)
        if kind == "imm":

            def loss_fn(m, step):
                return imm_loss(m, target(cfg.batch, g), cfg.imm, g, step)[0]
        else:

            def loss_fn(m, _):
                return fm_loss(m, target(cfg.batch, g), cfg.fm, g)[0]

        nets[kind], stats = fit(net, loss_fn, cfg.fit, f"{name} {kind}")
        res["models"][kind] = {**stats, "params": sum(p.numel() for p in net.parameters())}
    nets["bayes"] = BayesOneTime(target(cfg.bayes_points, g), sigma_d)

    t_max = {"fm": cfg.fm.t_max, "imm": cfg.imm.t_max, "bayes": 1.0}
    noises = [
        sigma_d * torch.randn(cfg.eval_samples, 2, generator=torch.Generator().manual_seed(cfg.seed + 3000 + j))
        for j in range(cfg.noise_seeds)
    ]
    samples: dict[str, dict[int, torch.Tensor]] = {k: {} for k in SAMPLERS}
    for kind, (net_name, method) in SAMPLERS.items():
        entry = res["models"].setdefault(kind, {})
        entry.update(sampler=method, t_max=t_max[net_name], per_steps={})
        for N in cfg.steps:  # the same noises for every N and model (common random numbers)
            grid = time_grid(N, t_max[net_name], 0.0)
            scores = []
            for j, noise in enumerate(noises):
                restart = torch.Generator().manual_seed(N + 1000 * j)
                x = sample(nets[net_name], noise, grid, sigma_d, method, generator=restart)
                samples[kind].setdefault(N, x)  # the figures show the first noise draw
                scores.append(_scores(x, fresh, name))
            point = {k: sum(sc[k] for sc in scores) / len(scores) for k in scores[0]}
            point["energy_sd"] = _mean_std([sc["energy"] for sc in scores])["std"]
            entry["per_steps"][str(N)] = point
    samples["target"] = {0: fresh[0]}
    return res, samples


def run_continuous(cfg: ContinuousStudyConfig) -> tuple[dict, dict]:
    """All targets. Returns (JSON-ready results, samples for the figures)."""
    t0 = time.perf_counter()
    results: dict = {"config": asdict(cfg), "targets": {}}
    all_samples = {}
    for name in cfg.targets:
        results["targets"][name], all_samples[name] = run_target(name, cfg)
    results["wall_seconds"] = time.perf_counter() - t0
    return results, all_samples
