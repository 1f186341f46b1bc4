#!/usr/bin/env python
"""What a 1-step map of this network and budget can reach at all: regress the flow map's jump f(x_T, T, 0) on
the endpoints of a teacher's few-step sampler from the same noise (distillation, not IMM). A probe for
docs/results.md, "The 1-step map": if the student reaches the teacher, the network can hold a 1-step map and the
IMM stage's training signal is what falls short; if it does not, capacity or budget does.

    python scripts/probe_one_step.py --teacher runs/shapes_cont_fm/release --teacher-steps 4 \\
        --config configs/train/shapes_release_imm_from_fm.yaml train.steps=1000 train.output_dir=runs/probe_1step
    python scripts/eval_shapes.py --model runs/probe_1step/release --steps 1 --guidance 1 3

The run is an ordinary run folder (checkpoints, metrics.jsonl, release/): the trainer's loop with the image loss
replaced by ||f(x_T, T, 0) - x_teacher||^2 per image, where x_teacher is the teacher's Euler (one-time model) or
pushforward (flow map) sampler from x_T over --teacher-steps steps, conditional only (the student's targets whose
condition is dropped get the teacher's unconditional endpoint, so guidance still works on the student). The text
loss is kept, so the student stays a language model (both at weight 1; objective.text_weight / image_weight are
not read).
"""

from __future__ import annotations

import argparse
import math

import torch

from mmgen.cli import cli_main
from mmgen.config.core import load_config
from mmgen.config.schema import RunConfig
from mmgen.flowmap import flow_map, network_input
from mmgen.models.model import MMGenModel
from mmgen.models.patches import patchify
from mmgen.objectives.ntp import ntp_loss_sum, text_targets
from mmgen.sampling.flow_map import time_grid
from mmgen.sampling.release import load_release
from mmgen.train import build
from mmgen.train.loop import Trainer
from mmgen.train.schedule import learning_rate


class OneStepDistillation(Trainer):
    def __init__(self, cfg: RunConfig, teacher: MMGenModel, teacher_steps: int, two_time: bool):
        super().__init__(cfg)
        self.teacher = teacher.to(self.engine.device).eval().requires_grad_(False)
        self.teacher_steps = teacher_steps
        self.two_time = two_time

    def _g(self, model, batch, prep, x: torch.Tensor, t: float, s: float) -> torch.Tensor:
        """G of `model` at every target's noisy copy x [n, C, h, w], time t, second time s."""
        fn = self.loss_fn
        noisy = torch.zeros_like(prep.noisy)
        tt = torch.full((x.shape[0],), t, device=x.device)
        noisy[prep.targets] = patchify(network_input(x, tt, fn.sigma_d), fn.p)
        t_img, s_img = prep.t.clone(), prep.s.clone()
        t_img[prep.targets], s_img[prep.targets] = t, s
        none = torch.zeros_like(batch.labels, dtype=torch.bool)
        out = model(**fn._inputs(batch, prep, noisy, t_img, s_img), text_positions=none)
        return fn._g(out.image, batch, prep)

    def train_step(self, micro):
        e, cfg, fn = self.engine, self.cfg, self.loss_fn
        (b,) = micro  # one micro-batch per step
        gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + self.step * 7919 + e.rank)
        noise = fn.draw(b, gen, self.step)
        T = float(fn.cfg.imm.t_max)
        noise.t, noise.s, noise.r = (torch.full_like(noise.t, v) for v in (T, 0.0, 0.0))
        x0 = build.clean_latents(b, self.image_tok, fn.sigma_d, e.device)
        b = b.to(e.device)
        e.set_lr(learning_rate(self.step, cfg.train))
        prep = fn._prepare(b, x0, noise)  # x_t at T: the student's and the teacher's start
        n = prep.targets.numel()
        with torch.no_grad():
            x = prep.x_t
            times = time_grid(self.teacher_steps, T, 0.0).tolist()
            for t, s in zip(times[:-1], times[1:]):
                g = self._g(self.teacher, b, prep, x, t, s if self.two_time else t)
                x = flow_map(
                    x, torch.full((n,), t, device=x.device), torch.full((n,), s, device=x.device), g, fn.sigma_d
                )
        with e.autocast():
            where_text, text_y = text_targets(b.labels)
            out = e.model(**fn._inputs(b, prep, prep.noisy, prep.t), text_positions=where_text)
            text_sum = ntp_loss_sum(out.logits, text_y.to(x0.device))
            y = flow_map(prep.x_t, noise.t.to(x.device), noise.s.to(x.device), fn._g(out.image, b, prep), fn.sigma_d)
            img = (y.float() - x.float()).pow(2).flatten(1).mean(1).sum()
            n_text = max(1, int(where_text.sum()))
            loss = text_sum / n_text + img / max(n, 1)
        e.backward(loss, last=True)
        grad_norm = e.step(skip=not math.isfinite(float(loss.detach())))
        self.ema.update(e.param_shards())
        return {
            "loss": float(loss.detach()),
            "text_loss": float(text_sum.detach()) / n_text,
            "image_loss": float(img.detach()) / max(n, 1),
            "grad_norm": grad_norm if grad_norm is not None else float("nan"),
            "lr": learning_rate(self.step, cfg.train),
            "skipped": 0.0,
            "image_targets": float(n),
            "imm_groups": 0.0,
        }


@cli_main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="release folder of the teacher")
    ap.add_argument("--teacher-steps", type=int, default=4)
    ap.add_argument("--config", required=True, help="run config of the student (train.init_from: its start)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(RunConfig, args.config, args.overrides)
    if cfg.train.grad_accum != 1:
        raise SystemExit("probe_one_step.py runs one micro-batch per step: set train.grad_accum=1")
    teacher = load_release(args.teacher)[0]
    two_time = teacher.config.image_objective == "imm"
    OneStepDistillation(cfg, teacher, args.teacher_steps, two_time).train()


if __name__ == "__main__":
    main()
