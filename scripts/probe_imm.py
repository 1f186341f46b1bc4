#!/usr/bin/env python
"""Two probes of a flow map trained on a packed stream (docs/results.md, "The 1-step map"), on real batches of the
run config's data:

1. **Second-time dependence.** ||G(x_t, t, s) - G(x_t, t, t)|| / ||G(x_t, t, t)|| for the same inputs: a flow map
   whose G does not depend on s is an Euler step of its own velocity, and its 1-step sample is the conditional
   mean; an exact flow map's jump to s = 0 differs from the velocity by the curvature of the path. For scale,
   the model's own 16-step sampler from the same x_t to 0, written as a G (`ode16_vs_velocity`: how far an
   exact jump lies from the velocity; `jump_vs_ode16`: how far the model's 1-step jump lies from it).
2. **Kernel exponent.** w(s, t) ||a - b|| / D of the Laplace kernel at the 1-step jump, median over pairs of
   images (and with sqrt(D), imm.kernel_norm = sqrt_dim): near 0 the kernel is nearly linear.
3. **Gradient shares.** The norm of the image loss's gradient from MMD groups alone (imm.boundary_fraction = 0)
   and from boundary groups alone (= 1, flow matching at s = t), per loss unit, on the same batches: how much
   of an IMM step the MMD term steers when both are mixed.

    python scripts/probe_imm.py --model runs/shapes_imm_from_fm/release --model runs/shapes_cont_fm/release \\
        --config configs/train/shapes_release_imm_from_fm.yaml --out results/shapes_ablation/probe_imm.json

Each --model is a release folder loaded into the run config's model (train.init_from); the text loss is left out.
Runs on the CPU (a few minutes per model at the tiny preset).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch

from mmgen.cli import cli_main
from mmgen.config.core import load_config
from mmgen.config.schema import RunConfig
from mmgen.files import save_json
from mmgen.flowmap import flow_map
from mmgen.objectives.multimodal import LossNorm, count_units
from mmgen.train import build
from mmgen.train.loop import Trainer

TIMES = (0.99, 0.9, 0.6, 0.3)  # t of the second-time probe; s in {0, t/3, 0.9 t} against s = t
REF_STEPS = 16  # the model's own many-step sampler from x_t to 0: what its 1-step jump should match


def s_dependence(tr: Trainer, batches: list, x0s: list) -> dict:
    fn, model = tr.loss_fn, tr.engine.model
    two_time = tr.cfg.objective.image == "imm"  # flow matching: Euler steps (s = t)
    out: dict = {}
    with torch.no_grad():
        for t in TIMES:
            rel: dict[str, list[float]] = {}
            for b, x0 in zip(batches, x0s):
                noise = fn.draw(b, torch.Generator().manual_seed(0), 10**9)
                n = len(noise.t)
                noise.uncond = torch.zeros(n, dtype=torch.bool)
                noise.t = torch.full((n,), t)
                prep = fn._prepare(b, x0, noise)
                gs = {
                    s: fn.g_at(model, b, prep, prep.x_t, torch.full((n,), t), torch.full((n,), s)).flatten(1)
                    for s in (0.0, t / 3, 0.9 * t, t)
                }
                for s, g in gs.items():
                    if s != t:
                        key = f"s={s / t:.2g}t"
                        rel.setdefault(key, []).append(float((g - gs[t]).norm() / gs[t].norm()))
                # the jump the model's own 16-step sampler makes from the same x_t to 0, as a G
                x = prep.x_t
                grid = torch.linspace(t, 0.0, REF_STEPS + 1).tolist()
                for hi, lo in zip(grid[:-1], grid[1:]):
                    g = fn.g_at(model, b, prep, x, torch.full((n,), hi), torch.full((n,), lo if two_time else hi))
                    x = flow_map(x, torch.full((n,), hi), torch.full((n,), lo), g, fn.sigma_d)
                g_ref = ((prep.x_t - x) / (t * fn.sigma_d)).flatten(1)
                rel.setdefault("ode16_vs_velocity", []).append(float((g_ref - gs[t]).norm() / gs[t].norm()))
                rel.setdefault("jump_vs_ode16", []).append(float((gs[0.0] - g_ref).norm() / g_ref.norm()))
            out[f"t={t}"] = {k: sum(v) / len(v) for k, v in rel.items()}
    return out


def kernel_exponent(tr: Trainer, x0s: list, batches: list) -> dict:
    """Median of w(s, t) ||a - b|| / D (the paper's kernel) and / sqrt(D) over pairs of target latents, at the
    1-step jump (t = T, s = 0), where the particles are images: how far from linear the kernel is."""
    from mmgen.objectives.imm import kernel_weight

    x = torch.cat([x0[b.image_loss] for x0, b in zip(x0s, batches)]).flatten(1)
    half = x.shape[0] // 2
    d = (x[:half] - x[half : 2 * half]).norm(dim=1).median()
    imm = tr.cfg.objective.imm
    w = float(kernel_weight(torch.tensor([imm.t_max]), torch.tensor([0.0]), imm))
    D = x.shape[1]
    return {"D": D, "median_distance": float(d), "w": w, "dim": w * float(d) / D, "sqrt_dim": w * float(d) / D**0.5}


def gradient_shares(tr: Trainer, batches: list, x0s: list) -> dict:
    fn, model = tr.loss_fn, tr.engine.model
    base = fn.cfg
    out = {}
    for kind, fraction in (("mmd_groups", 0.0), ("boundary_groups", 1.0)):
        fn.cfg = dataclasses.replace(
            base, text_weight=0.0, imm=dataclasses.replace(base.imm, boundary_fraction=fraction)
        )
        norms, losses = [], []
        for i, (b, x0) in enumerate(zip(batches, x0s)):
            noise = fn.draw(b, torch.Generator().manual_seed(i), 10**9)
            n_text, units = count_units(b, noise, fn.cfg)
            model.zero_grad(set_to_none=True)
            loss, st = fn(model, b, x0, noise, LossNorm(max(n_text, 1), max(units, 1)))
            loss.backward()
            norms.append(float(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))))
            losses.append(st["image_loss"])
        out[kind] = {"grad_norm": sum(norms) / len(norms), "loss": sum(losses) / len(losses)}
    fn.cfg = base
    model.zero_grad(set_to_none=True)
    out["mmd_over_boundary"] = out["mmd_groups"]["grad_norm"] / out["boundary_groups"]["grad_norm"]
    return out


@cli_main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="release folder(s)")
    ap.add_argument("--config", required=True, help="run config: data, objective and model shape")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--out", default="results/probe_imm.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result: dict = {"config": args.config, "overrides": args.overrides, "batches": args.batches, "models": {}}
    for release in args.model:
        with tempfile.TemporaryDirectory() as tmp:
            over = [*args.overrides, f"train.init_from={release}", f"train.output_dir={Path(tmp) / 'run'}"]
            tr = Trainer(load_config(RunConfig, args.config, over))
            if tr.engine.device.type != "cpu":
                raise SystemExit(f"probe_imm.py runs on the CPU, not {tr.engine.device}: set CUDA_VISIBLE_DEVICES=''")
            it = iter(tr.data)
            batches = [next(it) for _ in range(args.batches)]
            x0s = [build.clean_latents(b, tr.image_tok, tr.loss_fn.sigma_d, "cpu") for b in batches]
            tr.engine.model.eval()
            entry = {
                "kernel_exponent": kernel_exponent(tr, x0s, batches),
                "s_dependence": s_dependence(tr, batches, x0s),
                "gradients": gradient_shares(tr, batches, x0s),
            }
        result["models"][release] = entry
        print(release, entry, flush=True)
    save_json(result, args.out)


if __name__ == "__main__":
    main()
