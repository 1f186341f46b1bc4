#!/usr/bin/env python
"""Training throughput and memory: the real `scripts/train.py`, launched through accelerate.

    python scripts/bench_train.py                     # CPU: tiny + small single-process; small under ZeRO-1/2/3 x 2
    python scripts/bench_train.py --only single       # just the single-process rows
    python scripts/bench_train.py --only groups       # IMM groups per optimizer step and per second (CIFAR-10)

Per configuration: tokens/s (median over the logged steps after the first), peak memory per rank
(resident set size on a CPU, peak allocated on a GPU) and the tensor storage each rank holds after a step
(parameters, gradients, optimizer state, EMA: what ZeRO shards; the RSS keeps freed pages and the libraries,
so on a CPU only this column shows the saving), read from each run's metrics.jsonl. The ZeRO rows
use two processes (gloo on a CPU) and show what sharding optimizer state (1), gradients (2) and
parameters (3) saves per rank. Writes results/bench_train.json.

`--only groups` runs the CIFAR-10 IMM recipe (`configs/train/cifar10_imm.yaml`, no warm start, no boundary
groups, so every group is an MMD group) with the ways of getting more groups per optimizer step: more rows,
gradient accumulation, and image-first documents left out of the shards (`--layout caption_image`: every
image is a generation target). It reports IMM groups per step and per second (`metrics.jsonl`) and writes
results/bench_groups.json. It needs the shards of both layouts (the command prints how to write them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from mmgen.files import save_json

REPO = Path(__file__).resolve().parents[1]


def run(
    name: str,
    accel: str,
    nproc: int,
    model: str,
    steps: int,
    rows: int,
    extra: list[str],
    tmp: Path,
    config: str | None = None,
) -> dict:
    out = tmp / name
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / accel),
        "--num_processes",
        str(nproc),
        str(REPO / "scripts/train.py"),
        *(["--config", config] if config else []),
        f"model={json.dumps(_model(model))}",
        f"train.output_dir={out}",
        f"train.steps={steps}",
        "train.log_every=1",
        "train.sample_every=0",
        "train.ckpt_every=0",
        "train.warmup_steps=1",
        f"data.rows={rows}",
        *extra,
    ]
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(REPO / ".cache/torch_extensions"), TOKENIZERS_PARALLELISM="false")
    if nproc > 1 and not torch.cuda.is_available():
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // nproc))
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{res.stderr[-4000:]}")
    rows_ = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    later = rows_[1:] or rows_
    if "imm_groups" in rows_[-1]:
        extra_rows = {
            "imm_groups_per_step": statistics.median(r["imm_groups"] for r in later),
            "imm_groups_per_s": statistics.median(r["imm_groups_per_s"] for r in later),
        }
    else:
        extra_rows = {}
    return {
        **extra_rows,
        "name": name,
        "model": model,
        "processes": nproc,
        "steps": steps,
        "rows_per_rank": rows,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in later),
        "peak_mem_mb_per_rank": [round(x, 1) for x in rows_[-1]["mem_mb_per_rank"]],
        "tensor_mb_per_rank": [round(x, 1) for x in rows_[-1]["tensor_mb_per_rank"]],
        "params_total": rows_[-1]["params_total"],
        "params_on_rank0": rows_[-1]["params_local"],
    }


GROUP_VARIANTS = {  # name -> overrides of the CIFAR-10 IMM recipe
    "rows 8 (the recipe)": [],
    "rows 16": ["data.rows=16"],
    "grad_accum 2": ["train.grad_accum=2"],
    "caption-first shards, rows 8": ["data.shards=data/shards/cifar10-train-t2i"],
}


def groups(steps: int, tmp: Path) -> list[dict]:
    for folder, layout in (("cifar10-train", "both"), ("cifar10-train-t2i", "caption_image")):
        if not (REPO / "data/shards" / folder).is_dir():
            sys.exit(
                f"missing data/shards/{folder}: python scripts/prepare_data.py --source cifar10 --split train "
                f"--layout {layout} --out data/shards/{folder}"
            )
    recipe = str(REPO / "configs/train/cifar10_imm.yaml")
    base = ["objective.imm.warm_start_steps=0", "objective.imm.boundary_fraction=0"]
    out = []
    for i, (name, extra) in enumerate(GROUP_VARIANTS.items()):
        r = run(f"groups-{i}", "configs/accelerate/single.yaml", 1, "tiny", steps, 8, base + extra, tmp, recipe)
        r["name"], r["overrides"] = name, extra
        out.append(r)
        print(
            f"{name:>30}: {r['imm_groups_per_step']:5.1f} groups/step  {r['imm_groups_per_s']:6.2f} groups/s  "
            f"{r['tokens_per_s']:6.0f} tok/s",
            flush=True,
        )
    return out


def _model(preset: str) -> dict:
    import yaml

    return yaml.safe_load((REPO / "configs/model" / f"{preset}.yaml").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["single", "zero", "groups"], default=None)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default=str(REPO / "results" / "bench_train.json"))
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.only == "groups":
            device = f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
            res = groups(args.steps, tmp)
            save_json(
                {"device": device, "torch": torch.__version__, "results": res}, REPO / "results/bench_groups.json"
            )
            return
        if args.only in (None, "single"):
            results.append(run("single-tiny", "configs/accelerate/single.yaml", 1, "tiny", args.steps + 4, 8, [], tmp))
            results.append(run("single-small", "configs/accelerate/single.yaml", 1, "small", args.steps, 4, [], tmp))
        if args.only in (None, "zero"):
            results.append(
                run(
                    "ddp-small-x2",
                    "configs/accelerate/ddp_cpu.yaml"
                    if not torch.cuda.is_available()
                    else "configs/accelerate/ddp.yaml",
                    2,
                    "small",
                    args.steps,
                    2,
                    [],
                    tmp,
                )
            )
            for stage in (1, 2, 3):
                results.append(
                    run(
                        f"zero{stage}-small-x2",
                        f"configs/accelerate/zero{stage}.yaml",
                        2,
                        "small",
                        args.steps,
                        2,
                        [],
                        tmp,
                    )
                )
    for r in results:
        print(
            f"{r['name']:>16}: {r['tokens_per_s']:8.0f} tok/s  peak MB per rank {r['peak_mem_mb_per_rank']}  "
            f"tensors MB per rank {r['tensor_mb_per_rank']}  "
            f"params on rank 0 {r['params_on_rank0'] / 1e6:.1f}M of {r['params_total'] / 1e6:.1f}M"
        )
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    )
    save_json({"device": device, "torch": torch.__version__, "results": results}, args.out)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
