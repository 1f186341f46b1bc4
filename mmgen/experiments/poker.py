"""The discrete inference-first study: an autoregressive and a masked-diffusion transformer of the same size
on tuples whose validity is exact (two-word poker hands; N-token permutation tuples).

Every probability that can be computed exactly is: validity and KL(data || model) of the autoregressive model
from its teacher-forced likelihoods, and of the masked sampler with L steps from the network's categoricals on
every partially masked copy of the valid tuples (`md_exact.py`). Sampled estimates are reported beside them,
and so is the ideal masked denoiser (the data's exact conditionals): what perfect training would reach.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch

from mmgen.config.schema import AT_LEAST_0, AT_LEAST_1, Range
from mmgen.experiments.autoregressive import ar_log_prob, ar_loss, ar_sample
from mmgen.experiments.fit import FitConfig, fit
from mmgen.experiments.md_exact import sampler_probs
from mmgen.experiments.tiny_transformer import TinyTransformer
from mmgen.experiments.tuples import TupleData, conditionals, get_data, kl_from_support
from mmgen.objectives.masked_diffusion import MaskedDiffusionConfig, md_loss, sample


@dataclass
class DiscreteStudyConfig:
    tasks: list[str] = field(default_factory=lambda: ["poker", "perm4", "perm8"])
    values: int = 8  # K symbols of the perm<N> tasks
    width: int = 64
    depth: int = 2
    heads: int = 4
    batch: int = 128
    fit: FitConfig = field(default_factory=lambda: FitConfig(steps=1000, lr=3e-3, warmup=100, ema_decay=0.99))
    samples: int = 4000  # sampled estimates per (model, sampler setting)
    grids: list[str] = field(default_factory=lambda: ["cosine", "uniform"])
    unmask: list[str] = field(default_factory=lambda: ["random", "count"])
    max_steps: int = 0  # largest L tried; 0 = N (one token per step on average)
    seed: int = 0

    RANGES: ClassVar[dict[str, Range]] = {
        "values": Range(2, 64),
        "width": Range(1, 4096),
        "depth": Range(1, 64),
        "heads": Range(1, 64),
        "batch": Range(1, 1 << 16),
        "samples": AT_LEAST_1,
        "max_steps": AT_LEAST_0,
        "seed": AT_LEAST_0,
    }

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks must name at least one data set (poker, perm4, perm8, ...)")
        for name in self.tasks:
            get_data(name, self.values)  # raises on an unknown name
        if self.samples < 1 or self.batch < 1:
            raise ValueError("samples and batch must be >= 1")


def _sampled_stats(data: TupleData, x: torch.Tensor) -> dict[str, float | None]:
    """Fraction valid and plug-in KL(data || empirical) (None when a valid tuple was never drawn)."""
    freq = (x[:, None, :] == data.support[None]).all(-1).double().mean(0)  # [K]
    kl = kl_from_support(data.probs, freq)
    return {"valid_sampled": float(data.is_valid(x).double().mean()), "kl_sampled": None if math.isinf(kl) else kl}


def _exact_stats(data: TupleData, p_model: torch.Tensor, suffix: str) -> dict[str, float]:
    return {f"valid_{suffix}": float(p_model.sum()), f"kl_{suffix}": kl_from_support(data.probs, p_model)}


def _net(cfg: DiscreteStudyConfig, data: TupleData, causal: bool) -> TinyTransformer:
    V = len(data.vocab)  # inputs: V data tokens, [MASK] = V, [BOS] = V + 1; outputs: the V data tokens
    torch.manual_seed(cfg.seed)  # the same initial weights for both models
    return TinyTransformer(V + 2, V, data.length, cfg.width, cfg.depth, cfg.heads, causal=causal)


def run_task(name: str, cfg: DiscreteStudyConfig) -> dict:
    data = get_data(name, cfg.values, cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 1)  # every draw of the task, in this order: AR, then MD
    out: dict = {
        "data": {
            "name": name,
            "length": data.length,
            "vocab": data.vocab,
            "valid_tuples": data.decode(data.support),
            "entropy": float(-(data.probs * data.probs.log()).sum()),
        }
    }
    out["ar"] = _run_ar(name, cfg, data, g)
    md, out["md"] = _fit_md(name, cfg, data, g)
    out["md"]["rows"] = _md_rows(cfg, data, md, g)
    return out


def _run_ar(name: str, cfg: DiscreteStudyConfig, data: TupleData, g: torch.Generator) -> dict:
    """The autoregressive model: fit, then exact validity / KL from its likelihoods and sampled estimates."""
    bos_id = len(data.vocab) + 1
    ar, ar_stats = fit(
        _net(cfg, data, causal=True), lambda m, _: ar_loss(m, data.sample(cfg.batch, g), bos_id), cfg.fit, f"{name} AR"
    )
    x = ar_sample(ar, cfg.samples, data.length, bos_id, g)
    return {
        **ar_stats,
        **_exact_stats(data, ar_log_prob(ar, data.support, bos_id).exp(), "exact"),
        **_sampled_stats(data, x),
        "examples": data.decode(x[:8]),
    }


def _fit_md(name: str, cfg: DiscreteStudyConfig, data: TupleData, g: torch.Generator) -> tuple[torch.nn.Module, dict]:
    """The masked-diffusion model and its fit statistics, with how far its all-masked marginals are from the data's
    (the per-setting rows follow in `_md_rows`)."""
    mask_id = len(data.vocab)
    md_cfg = MaskedDiffusionConfig(mask_id=mask_id)
    md, md_stats = fit(
        _net(cfg, data, causal=False),
        lambda m, _: md_loss(m, data.sample(cfg.batch, g), md_cfg, g)[0],
        cfg.fit,
        f"{name} MD",
    )
    with torch.no_grad():
        marg = torch.softmax(md(torch.full((1, data.length), mask_id)).double(), -1)[0]  # [N, V]: the model's q_n
    return md, {
        **md_stats,
        "product_of_marginals": data.product_of_marginals(),
        "model_marginals_tv": float(0.5 * (marg - data.marginals()).abs().sum(-1).max()),
        "rows": [],
    }


def _md_rows(cfg: DiscreteStudyConfig, data: TupleData, md: torch.nn.Module, g: torch.Generator) -> list[dict]:
    """Per (time grid, unmasking order, L steps): the sampler's exact validity / KL with the model and with the ideal
    denoiser, and sampled estimates."""
    N, mask_id = data.length, len(data.vocab)

    def model_probs(z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(md(z).double(), dim=-1)

    def ideal_probs(z: torch.Tensor) -> torch.Tensor:
        return conditionals(data, z, mask_id)

    rows = []
    for grid in cfg.grids:
        for unmask in cfg.unmask:
            for L in range(1, (cfg.max_steps or N) + 1):
                kw = {"mask_id": mask_id, "steps": L, "grid": grid, "unmask": unmask}
                xs = sample(md, cfg.samples, N, generator=g, **kw)
                rows.append(
                    {
                        "grid": grid,
                        "unmask": unmask,
                        "steps": L,
                        **_exact_stats(data, sampler_probs(model_probs, data.support, **kw), "exact"),
                        **_exact_stats(data, sampler_probs(ideal_probs, data.support, **kw), "ideal"),
                        **_sampled_stats(data, xs),
                        "examples": data.decode(xs[:8]),
                    }
                )
    return rows


def run_discrete(cfg: DiscreteStudyConfig) -> dict:
    t0 = time.perf_counter()
    results = {"config": asdict(cfg), "tasks": {}}
    for name in cfg.tasks:
        results["tasks"][name] = run_task(name, cfg)
    results["wall_seconds"] = time.perf_counter() - t0
    return results
