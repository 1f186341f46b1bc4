#!/usr/bin/env python
"""The GPU check: four steps on one GPU, one JSON, a summary table printed last. Run it through
scripts/gpu_check.sh (environment, wheels, the overall time limit); `--cpu` runs every step on the CPU at
tiny sizes (a dry run of the code paths, for CI; its numbers say nothing about a GPU).

  1. tests: `pytest -m gpu tests/test_gpu.py` (flex == sdpa in bf16 on packed documents, compiled == eager,
     cached sampling == recompute, a training step finite);
  2. forward + backward at seq 4096, small and base presets, bf16 autocast: tokens/s, MFU (against the bf16
     dense peak of the card found, `mmgen.eval.timing.BF16_PEAK_TFLOPS`; attention FLOPs counted over the keys
     each query may see, i.e. the useful work), peak memory; MoT with FlexAttention vs MoT with the dense-mask SDPA, and MoT
     vs dense (both flex) -- the harness of mmgen/eval/backbone.py (scripts/bench_backbone.py);
  3. the small preset trained for about `--train-seconds` through `accelerate launch scripts/train.py` on the
     shapes stream (ZeRO-2 through DeepSpeed when it imports; bf16, flex): tokens/s and the loss curve; the
     step count comes from step 2's speed and a timeout guards the budget (sample sheets every quarter);
  4. sampling images/s at N = 1 and 4 with CFG (the step-3 release, else random weights of the small preset)
     -- the harness of mmgen/eval/generation.py (scripts/bench_generate.py).

Writes results/gpu/<device>.json (after every step, so a cut-off run keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

TARGETS = {"mfu_base_flex": 0.35, "flex_over_sdpa": 1.5, "mot_over_dense": 0.9}  # the "must show"


def sizes(cpu: bool) -> dict:
    if cpu:
        return {
            "presets": ["tiny"],
            "seq_len": 256,
            "rows": 2,
            "steps": 2,
            "warmup": 1,
            "train_preset": "tiny",
            "train_seq_len": 256,
            "train_rows": 4,
            "workers": 0,
            "sample_batch": 2,
            "repeats": 1,
        }
    return {
        "presets": ["small", "base"],
        "seq_len": 4096,
        "rows": 4,
        "steps": 8,
        "warmup": 3,
        "train_preset": "small",
        "train_seq_len": 2048,
        "train_rows": 8,
        "workers": 8,
        "sample_batch": 16,
        "repeats": 3,
    }


# ------------------------------------------------------------------------------------------------ steps
def step_tests(args) -> dict:
    env = dict(os.environ, MMGEN_GPU_TESTS_ON_CPU="1" if args.cpu else "0")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.tests_timeout)
    tail = (res.stdout + res.stderr).strip().splitlines()
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", tail[-1] if tail else "")}
    if res.returncode != 0:
        print("\n".join(tail[-40:]))
    return {
        "ok": res.returncode == 0,
        "counts": counts,
        "seconds": round(time.perf_counter() - t0, 1),
        "summary": tail[-1] if tail else "",
    }


def step_bench(args, device, sz) -> dict:
    from mmgen.eval.backbone import Sizes, flops_per_token, time_variants, variants_for, visible_keys
    from mmgen.eval.presets import TEXT_TOKENIZER
    from mmgen.eval.timing import bf16_peak_tflops
    from mmgen.models.attention import MaskPlan, block_mask
    from mmgen.tokenizer.text import ensure_text_tokenizer

    tok = ensure_text_tokenizer(TEXT_TOKENIZER)
    variants = variants_for(["mot-flex", "mot-sdpa", "dense-flex"], device)  # flex runs SDPA on the CPU
    peak = bf16_peak_tflops(device)
    sizes = Sizes(sz["rows"], sz["seq_len"], sz["steps"], sz["warmup"])
    rows = []
    for preset in sz["presets"]:
        # --bench-compile: what train.compile does; each preset x attention compiles anew (~1 min each)
        run = time_variants(tok, preset, variants, sizes, device, torch.bfloat16, compile_blocks=args.bench_compile)
        models, batch, n_tok, times, mem = run.models, run.batch, run.tokens, run.seconds, run.peak_mb
        cfg = models["mot-flex"].config
        keys = visible_keys(batch)
        plan = MaskPlan.of(batch.to(device))
        tiles = block_mask(plan, sz["seq_len"]).to_dense()  # [B, 1, L/128, L/128]: the tiles flex computes
        row = {
            "preset": preset,
            "width": cfg.width,
            "depth": cfg.depth,
            "rows": sz["rows"],
            "seq_len": sz["seq_len"],
            "tokens": n_tok,
            "documents_per_row": statistics.mean(len(r[r >= 0].unique()) for r in batch.doc),
            "image_token_fraction": round(run.image_fraction, 3),
            "visible_keys_per_query": round(keys, 1),
            "flex_tiles_computed_fraction": round(float(tiles.bool().float().mean()), 4),
        }
        for name, ts in times.items():
            tps = n_tok / statistics.median(ts)
            flops = flops_per_token(models[name].config, keys) * tps
            row[name] = {
                "tokens_per_s": round(tps, 1),
                "mfu": None if peak is None else round(flops / (peak * 1e12), 4),
                "peak_mem_mb": None if mem[name] is None else round(mem[name], 1),
            }
        row["flex_over_sdpa"] = round(row["mot-flex"]["tokens_per_s"] / row["mot-sdpa"]["tokens_per_s"], 3)
        row["mot_over_dense"] = round(row["mot-flex"]["tokens_per_s"] / row["dense-flex"]["tokens_per_s"], 3)
        rows.append(row)
        del models, run
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = {
        "ok": True,
        "dtype": "bf16 autocast, fp32 weights",
        "compiled_blocks": args.bench_compile,
        "peak_tflops_bf16": peak,
        "results": rows,
    }
    if peak is None and device.type == "cuda":
        out["note"] = (
            f"no bf16 peak known for '{torch.cuda.get_device_name(device)}': MFU not computed "
            "(add it to mmgen.eval.timing.BF16_PEAK_TFLOPS)"
        )
    if args.cpu:
        out["note"] = "CPU dry run: 'flex' variants run SDPA (no FlexAttention backward on a CPU); no MFU, no memory"
    return out


def _show(p: Path) -> str:
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def step_train(args, device, sz, bench: dict | None, out: Path, left_s: float) -> dict:
    import importlib.util

    run = Path(args.run_dir)
    shutil.rmtree(run, ignore_errors=True)
    tokens_per_step = sz["train_rows"] * sz["train_seq_len"]
    # the whole check fits --budget: training gets what is left after start-up (~60 s) and step 4 (~45 s)
    train_s = max(30.0, min(args.train_seconds, left_s - 105))
    if args.cpu:
        steps = 6
    else:  # from step 2's forward+backward speed: a training step took 3.5x that on an H100 (IMM target forward,
        # optimizer, EMA, data), and the first ~40 steps ~60 s (launch, DeepSpeed, FlexAttention compiling per shape)
        small = next((r for r in (bench or {}).get("results", []) if r["preset"] == sz["train_preset"]), None)
        tok_s = small["mot-flex"]["tokens_per_s"] / 3.5 if small else 50_000.0
        steps = int(min(max((train_s - 60) * tok_s / tokens_per_step, 50), 20_000))
    zero2 = device.type == "cuda" and importlib.util.find_spec("deepspeed") is not None
    accel = "configs/accelerate/zero2.yaml" if zero2 else "configs/accelerate/single.yaml"
    model = json.dumps(yaml.safe_load((REPO / "configs" / "model" / f"{sz['train_preset']}.yaml").read_text()))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        accel,
        "--num_processes",
        "1",
        "scripts/train.py",
        f"model={model}",
        f"train.output_dir={run}",
        f"train.steps={steps}",
        "train.log_every=5",
        f"train.sample_every={max(1, steps // 4)}",
        "train.ckpt_every=0",
        f"train.warmup_steps={max(1, steps // 20)}",
        f"train.compile={str(args.train_compile).lower()}",
        "objective.imm.warm_start_steps=0",
        f"data.seq_len={sz['train_seq_len']}",
        f"data.rows={sz['train_rows']}",
        f"data.num_workers={sz['workers']}",
    ]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    # its own process group: on a timeout the launcher *and* the training process it started are stopped (else
    # the orphaned trainer keeps the GPU busy through step 4, as it did on the first H100 run)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        log_text, _ = proc.communicate(timeout=max(60.0, left_s - 45))
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log_text, _ = proc.communicate()
        rc = "timeout"
    tail = (log_text or "")[-3000:]
    wall = time.perf_counter() - t0
    log = run / "metrics.jsonl"
    rows = [json.loads(ln) for ln in log.read_text().splitlines() if '"loss"' in ln] if log.is_file() else []
    if rc != 0:
        print(tail)
    curve = [(r["step"], round(r["loss"], 4)) for r in rows]
    k = max(1, len(curve) // 5)
    first, last = (
        (statistics.mean(v for _, v in curve[:k]), statistics.mean(v for _, v in curve[-k:])) if curve else (None, None)
    )
    sheets = sorted((run / "samples").glob("*.png")) if (run / "samples").is_dir() else []
    last_sheet = None
    if sheets:  # the last sample sheet goes next to the JSON, so the results folder shows what was drawn
        last_sheet = out.with_name(out.stem + "-samples.png")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sheets[-1], last_sheet)
    return {
        "ok": rc == 0 and bool(curve),
        "returncode": rc,
        "launcher": accel,
        "train_seconds_planned": round(train_s),
        "zero2": zero2,
        "steps_planned": steps,
        "steps_done": curve[-1][0] if curve else 0,
        "tokens_per_step": tokens_per_step,
        "wall_s": round(wall, 1),
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in rows[1:] or rows), 1) if rows else None,
        "peak_mem_mb": rows[-1]["mem_mb"] if rows else None,
        "loss_first": first,
        "loss_last": last,
        "loss_falls": None if first is None else last < first,
        "loss_curve": curve,
        "sample_sheets": [_show(p) for p in sheets],
        "last_sheet": None if last_sheet is None else _show(last_sheet),
        "release": str(run / "release") if (run / "release").is_dir() else None,
    }


def step_sample(args, device, sz, release: str | None) -> dict:
    from mmgen.config.schema import GUIDANCE
    from mmgen.eval.generation import images_per_s
    from mmgen.eval.presets import random_pipe
    from mmgen.sampling.pipeline import MMGenPipeline

    if release:
        pipe = MMGenPipeline.from_pretrained(release, device=device)
    else:
        pipe = random_pipe(sz["train_preset"], 512, device)
    per_n = images_per_s(pipe, sz["sample_batch"], [1, 4], sz["repeats"], device)
    return {
        "ok": True,
        "model": release or f"{sz['train_preset']} preset, random weights",
        "guidance": GUIDANCE,
        "batch": sz["sample_batch"],
        "attention_prefill": pipe.model.attention_backend(),
        "images_per_s": per_n,
    }


# ------------------------------------------------------------------------------------------------ report
def summary(rep: dict) -> str:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f} %"

    def verdict(x, target):  # the targets are about a GPU: no verdict on the CPU dry run
        return "" if x is None or rep["cpu"] else ("  PASS" if x >= target else "  FAIL")

    lines = [
        f"GPU check on {rep['device']} (torch {rep['torch']}, {rep['wall_s']:.0f} s{', CPU dry run' if rep['cpu'] else ''})"
    ]
    s = rep["steps"]
    t = s.get("tests", {})
    lines.append(f"1 tests (pytest -m gpu)      {t.get('summary') or t.get('error', 'not run')}")
    b = s.get("bench", {})
    for r in b.get("results", []):
        for v in ("mot-flex", "mot-sdpa", "dense-flex"):
            m = r[v]
            mem = "n/a" if m["peak_mem_mb"] is None else f"{m['peak_mem_mb']:,.0f} MB"
            lines.append(
                f"2 {r['preset']:<5} {v:<10} seq {r['seq_len']}  {m['tokens_per_s']:>12,.0f} tok/s  "
                f"MFU {pct(m['mfu']):>8}  peak {mem}"
            )
        lines.append(
            f"  {r['preset']:<5} flex / sdpa {r['flex_over_sdpa']:.2f}x (>= {TARGETS['flex_over_sdpa']})"
            f"{verdict(r['flex_over_sdpa'], TARGETS['flex_over_sdpa'])}   MoT / dense {r['mot_over_dense']:.2f}x "
            f"(>= {TARGETS['mot_over_dense']}){verdict(r['mot_over_dense'], TARGETS['mot_over_dense'])}   "
            f"{r['documents_per_row']:.0f} documents per row, flex computes "
            f"{100 * r['flex_tiles_computed_fraction']:.1f} % of the tiles"
        )
        if r["preset"] == "base":
            mfu = r["mot-flex"]["mfu"]
            lines.append(f"  base MoT flex MFU {pct(mfu)} (>= 35 %){verdict(mfu, TARGETS['mfu_base_flex'])}")
    if "error" in b:
        lines.append(f"2 benchmark                  {b['error']}")
    tr = s.get("train", {})
    if "loss_curve" in tr:
        lines.append(
            f"3 train {rep['sizes']['train_preset']} ({'ZeRO-2' if tr['zero2'] else 'single process'}) "
            f"{tr['steps_done']}/{tr['steps_planned']} steps in {tr['wall_s']:.0f} s: {tr['tokens_per_s'] or 0:,.0f} "
            f"tok/s, loss {tr['loss_first'] or float('nan'):.3f} -> {tr['loss_last'] or float('nan'):.3f}"
            f" ({'falls' if tr['loss_falls'] else 'does not fall'}); sheets: {len(tr['sample_sheets'])}"
        )
    elif tr:
        lines.append(f"3 train                      {tr.get('error', tr)}")
    sm = s.get("sample", {})
    if "images_per_s" in sm:
        ips = ", ".join(f"N = {r['steps']}: {r['images_per_s']:,.1f}" for r in sm["images_per_s"])
        lines.append(f"4 sampling, CFG, batch {sm['batch']}    images/s {ips}")
    elif sm:
        lines.append(f"4 sampling                   {sm.get('error', sm)}")
    lines.append(f"-> {rep['out']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="dry run: every step on the CPU at tiny sizes")
    ap.add_argument("--steps", default="1,2,3,4", help="which steps to run (comma-separated)")
    ap.add_argument("--train-seconds", type=float, default=150.0, help="step 3's training budget (start-up excluded)")
    ap.add_argument(
        "--train-compile", action="store_true", help="step 3 with train.compile=true (compiling takes ~1 min)"
    )
    ap.add_argument("--bench-compile", action="store_true", help="step 2 with compiled blocks (adds minutes)")
    ap.add_argument("--budget", type=float, default=455.0, help="seconds for all steps (gpu_check.sh stops at 470)")
    ap.add_argument("--tests-timeout", type=float, default=240.0)
    ap.add_argument("--run-dir", default=str(REPO / "runs" / "gpu_check"))
    ap.add_argument("--out", default=None, help="JSON path (default results/gpu/<device>.json)")
    args = ap.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or use --cpu for the dry run", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    if args.cpu:
        torch.set_num_threads(1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    out = (
        Path(args.out).resolve()
        if args.out
        else REPO
        / "results"
        / "gpu"
        / ("cpu-dry-run.json" if args.cpu else re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + ".json")
    )
    sz = sizes(args.cpu)
    rep = {"device": name, "cpu": args.cpu, "torch": torch.__version__, "sizes": sz, "out": str(out), "steps": {}}
    todo = {int(x) for x in args.steps.split(",")}
    t0 = time.perf_counter()

    def record(key: str, fn) -> None:
        print(f"== step {key}", flush=True)
        try:
            rep["steps"][key] = fn()
        except Exception as e:  # a failed step is reported and the others still run
            traceback.print_exc()
            rep["steps"][key] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        rep["wall_s"] = time.perf_counter() - t0
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rep, indent=1))

    if 1 in todo:
        record("tests", lambda: step_tests(args))
    if 2 in todo:
        record("bench", lambda: step_bench(args, device, sz))
    if 3 in todo:
        record(
            "train",
            lambda: step_train(
                args, device, sz, rep["steps"].get("bench"), out, args.budget - (time.perf_counter() - t0)
            ),
        )
    if 4 in todo:
        record("sample", lambda: step_sample(args, device, sz, rep["steps"].get("train", {}).get("release")))
    rep["wall_s"] = time.perf_counter() - t0
    out.write_text(json.dumps(rep, indent=1))
    print(summary(rep))
    return 0 if all(s.get("ok") for s in rep["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
