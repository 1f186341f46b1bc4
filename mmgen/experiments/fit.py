"""The one small training loop of the inference-first studies: AdamW, linear warm-up then cosine decay,
gradient clipping, and an EMA copy of the weights that is returned for sampling."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mmgen.config.schema import AT_LEAST_0, AT_LEAST_1, LEARNING_RATE, UNIT, UNIT_OPEN, Range


@dataclass
class FitConfig:
    steps: int = 6000
    lr: float = 1e-3
    warmup: int = 200
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # 0 = off
    ema_decay: float = 0.999  # 0 = no EMA (the online weights are returned)
    log_every: int = 0  # 0 = silent

    RANGES: ClassVar[dict[str, Range]] = {
        "steps": AT_LEAST_1,
        "lr": LEARNING_RATE,
        "warmup": AT_LEAST_0,
        "min_lr_ratio": UNIT,
        "grad_clip": AT_LEAST_0,
        "ema_decay": UNIT_OPEN,
        "log_every": AT_LEAST_0,
    }

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0:
            raise ValueError(f"fit needs steps >= 1 and lr > 0, got steps={self.steps}, lr={self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")


def lr_at(step: int, cfg: FitConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def fit(
    model: nn.Module, loss_fn: Callable[[nn.Module, int], torch.Tensor], cfg: FitConfig, name: str = ""
) -> tuple[nn.Module, dict[str, float]]:
    """Minimise loss_fn(model, step) for cfg.steps steps. Returns (EMA model in eval mode, stats)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    ema = copy.deepcopy(model).requires_grad_(False)
    t0, running = time.perf_counter(), 0.0
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = loss_fn(model, step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name or 'fit'}: non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            d = min(cfg.ema_decay, (1 + step) / (10 + step))  # short warm-up of the EMA
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p, 1 - d)
        value = float(loss.detach())
        running = 0.98 * running + 0.02 * value if step else value
        if cfg.log_every and (step + 1) % cfg.log_every == 0:
            print(
                f"  {name} step {step + 1}/{cfg.steps} loss {running:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True
            )
    return ema.eval(), {"final_loss": running, "train_seconds": time.perf_counter() - t0}
