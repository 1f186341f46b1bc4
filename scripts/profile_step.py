#!/usr/bin/env python
"""Where the time of one forward + backward goes: throughput of backbone variants (MoT / dense, flex / SDPA,
eager / compiled blocks) on one packed batch of shapes documents, then `torch.profiler` over a few steps of the
first variant, its kernels grouped into categories (matmul, attention, norm, index/copy, elementwise, other).

    python scripts/profile_step.py --device cuda --preset base --seq-len 4096 --rows 4 --compile
    python scripts/profile_step.py --preset tiny --seq-len 256 --rows 2      # CPU: the aten ops instead

`--image-size 128` makes documents of ~300-550 tokens (an image is 256 latent patches), a few per row, where
attention is a large share of the step; the default 32 px packs ~100 short documents per row.

Prints a table and writes JSON (default results/profile_step.json): tokens/s and MFU per variant, the share of
the profiled step in each category, the top kernels, and the device's busy fraction (kernel time / wall time;
well below 1 means the step waits on the host: launches, syncs).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from mmgen.eval.backbone import VARIANTS, Sizes, flops_per_token, time_variants, variants_for, visible_keys
from mmgen.eval.presets import TEXT_TOKENIZER
from mmgen.eval.timing import bf16_peak_tflops, device_name, sync
from mmgen.files import save_json
from mmgen.tokenizer.text import ensure_text_tokenizer

REPO = Path(__file__).resolve().parents[1]
# kernel / op name -> category, first match wins (lower case). Inductor names a fused kernel after the ops it
# fuses (triton_poi/red/per_fused_...): one with a norm in it counts as a norm, the others as fused elementwise
CATEGORIES = [
    ("attention", ("flex_attention", "fmha", "flash", "attention")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul", "aten::mm", "aten::bmm", "addmm", "linear")),
    ("norm", ("rms_norm", "rmsnorm", "layer_norm")),
    ("fused elementwise", ("triton_poi", "triton_red", "triton_per")),
    (
        "index/copy",
        ("index", "gather", "scatter", "sort", "radix", "unique", "copy", "cat", "stack", "memcpy", "memset"),
    ),
    ("elementwise", ("elementwise", "vectorized", "reduce", "aten::")),
]


def category(name: str) -> str:
    low = name.lower()
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), "other")


def profile(model, x: dict, device: torch.device, amp, steps: int) -> dict:
    """Profile `steps` forward+backward passes (after the caller's warm-up): per-kernel self time on CUDA (the
    aten ops' self CPU time on a CPU), grouped by category, and the device's busy fraction."""
    from time import perf_counter

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=acts) as prof:
        t0 = perf_counter()
        for _ in range(steps):
            with torch.autocast(device.type, amp or torch.float32, enabled=amp is not None):
                out = model(**x)
                loss = out.logits.float().pow(2).mean() + out.image.float().pow(2).mean()
            loss.backward()
            model.zero_grad(set_to_none=True)
        sync(device)
        wall_us = (perf_counter() - t0) * 1e6
    cuda = device.type == "cuda"
    rows = []
    for e in prof.key_averages():
        if cuda:  # kernels only: GPU-side user annotations (compiled regions) span kernels and would count twice
            if e.device_type != torch.autograd.DeviceType.CUDA or getattr(e, "is_user_annotation", False):
                continue
            us = e.self_device_time_total
        else:
            if not e.key.startswith("aten::"):
                continue
            us = e.self_cpu_time_total
        if us > 0:
            rows.append((e.key, us, e.count))
    total = sum(us for _, us, _ in rows) or 1.0
    cats: dict[str, float] = {}
    for name, us, _ in rows:
        cats[category(name)] = cats.get(category(name), 0.0) + us
    rows.sort(key=lambda r: -r[1])
    return {
        "steps": steps,
        "wall_ms_per_step": round(wall_us / steps / 1e3, 2),
        "kernel_ms_per_step": round(total / steps / 1e3, 2),
        "device_busy_fraction": round(total / wall_us, 3) if cuda else None,
        "category_share": {k: round(v / total, 4) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
        "top": [
            {"name": n[:160], "category": category(n), "ms_per_step": round(us / steps / 1e3, 3), "calls": c // steps}
            for n, us, c in rows[:40]
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--variants", default="mot-flex,mot-sdpa", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--profile-steps", type=int, default=2, help="profiled steps of the first variant (0: none)")
    ap.add_argument("--compile", action="store_true", help="compile the blocks (what train.compile does)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default: bf16 on CUDA, fp32 on a CPU")
    ap.add_argument("--out", default=str(REPO / "results" / "profile_step.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    amp = torch.bfloat16 if dtype == "bf16" else None
    names = args.variants.split(",")
    try:
        variants = variants_for(names, device)  # off CUDA the flex variants time SDPA under the same names
    except ValueError as e:
        ap.error(str(e))
    tok = ensure_text_tokenizer(TEXT_TOKENIZER)
    sizes = Sizes(args.rows, args.seq_len, args.steps, args.warmup)
    run = time_variants(tok, args.preset, variants, sizes, device, amp, args.compile, args.image_size)
    keys = visible_keys(run.batch)
    name = device_name(device)
    peak = bf16_peak_tflops(device)
    res = {}
    for v, ts in run.seconds.items():
        tps = run.tokens / statistics.median(ts)
        mfu = None if peak is None else flops_per_token(run.models[v].config, keys) * tps / (peak * 1e12)
        res[v] = {"tokens_per_s": round(tps, 1), "mfu": None if mfu is None else round(mfu, 4)}
        res[v]["peak_mem_mb"] = None if run.peak_mb[v] is None else round(run.peak_mb[v], 1)
        print(f"{v:<11} {tps:>12,.0f} tok/s" + ("" if mfu is None else f"  MFU {100 * mfu:5.1f} %"))
    first = names[0]
    prof = profile(run.models[first], run.x, device, amp, args.profile_steps) if args.profile_steps else None
    if prof:
        print(
            f"profile of {first}: {prof['wall_ms_per_step']} ms a step, kernels {prof['kernel_ms_per_step']} ms"
            + ("" if prof["device_busy_fraction"] is None else f" (device busy {prof['device_busy_fraction']:.0%})")
        )
        for k, share in prof["category_share"].items():
            print(f"  {k:<12} {100 * share:5.1f} %")
        for r in prof["top"][:15]:
            print(f"  {r['ms_per_step']:8.3f} ms  x{r['calls']:<4} {r['category']:<11} {r['name'][:90]}")
    docs = statistics.mean(len(r[r >= 0].unique()) for r in run.batch.doc)
    out = {
        "benchmark": "forward+backward of backbone variants on one packed batch; profile of the first",
        "device": name,
        "torch": torch.__version__,
        "dtype": dtype,
        "preset": args.preset,
        "compiled_blocks": args.compile,
        "rows": args.rows,
        "seq_len": args.seq_len,
        "image_size": args.image_size,
        "tokens": run.tokens,
        "documents_per_row": round(docs, 1),
        "image_token_fraction": round(run.image_fraction, 3),
        "visible_keys_per_query": round(keys, 1),
        "variants": res,
        "profile": prof,
    }
    if "mot-flex" in res and "mot-sdpa" in res:
        out["flex_over_sdpa"] = round(res["mot-flex"]["tokens_per_s"] / res["mot-sdpa"]["tokens_per_s"], 3)
    save_json(out, args.out)


if __name__ == "__main__":
    main()
