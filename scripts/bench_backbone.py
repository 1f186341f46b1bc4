#!/usr/bin/env python
"""Forward + backward throughput of the MoT backbone against a dense transformer of the same width and depth
(same process, same packed batch of shapes documents, alternating runs so machine noise hits both alike).

    python scripts/bench_backbone.py                       # tiny and small presets, CPU
    python scripts/bench_backbone.py --presets small --rows 8 --seq-len 1024 --device cuda --dtype bf16

Prints a table and writes results/bench_backbone.json. On a GPU it also reports model FLOPs utilisation
(MFU) in bf16, counting matmuls in every projection and the attention scores/values (6 N D + 12 L d T per
token for forward + backward) against the GPU's bf16 peak (--peak-tflops). `--dtype bf16` is the training
setting: bf16 autocast over fp32 weights. The measurement is mmgen/eval/backbone.py (scripts/gpu_check.py
times its attention variants and peak memory with it).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from mmgen.eval.backbone import Sizes, flops_per_token, time_variants
from mmgen.eval.presets import TEXT_TOKENIZER
from mmgen.eval.timing import device_name
from mmgen.files import save_json
from mmgen.tokenizer.text import ensure_text_tokenizer

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak of the GPU (H100 SXM: 989)")
    ap.add_argument("--out", default=str(REPO / "results" / "bench_backbone.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    tok = ensure_text_tokenizer(TEXT_TOKENIZER)
    amp = torch.bfloat16 if args.dtype == "bf16" else None
    sizes = Sizes(args.rows, args.seq_len, args.steps, args.warmup)
    results = []
    for preset in args.presets:
        variants = {"mot": {"experts": "mot"}, "dense": {"experts": "dense"}}
        run = time_variants(tok, preset, variants, sizes, device, amp, image_size=args.image_size)
        models, n_tok, times = run.models, run.tokens, run.seconds
        cfgs = {k: m.config for k, m in models.items()}
        row = {
            "preset": preset,
            "width": cfgs["mot"].width,
            "depth": cfgs["mot"].depth,
            "tokens": n_tok,
            "image_token_fraction": round(run.image_fraction, 3),
            "params_mot": sum(p.numel() for p in models["mot"].parameters()),
            "params_dense": sum(p.numel() for p in models["dense"].parameters()),
        }
        for k, ts in times.items():
            med = statistics.median(ts)
            row[f"{k}_tokens_per_s"] = n_tok / med
            if device.type == "cuda":
                row[f"{k}_mfu"] = flops_per_token(cfgs[k], args.seq_len) * n_tok / med / (args.peak_tflops * 1e12)
        row["mot_over_dense"] = row["mot_tokens_per_s"] / row["dense_tokens_per_s"]
        results.append(row)
        print(
            f"{preset:>6}: width {row['width']:4d} depth {row['depth']:2d} | MoT {row['mot_tokens_per_s']:9.0f} tok/s "
            f"| dense {row['dense_tokens_per_s']:9.0f} tok/s | ratio {row['mot_over_dense']:.3f}"
            + (f" | MFU MoT {row['mot_mfu']:.1%} dense {row['dense_mfu']:.1%}" if device.type == "cuda" else "")
        )
    out = {
        "benchmark": "forward+backward tokens/s, MoT vs dense of the same width/depth, same packed batch",
        "device": device_name(device),
        "dtype": args.dtype,
        "rows": args.rows,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "results": results,
    }
    save_json(out, args.out)


if __name__ == "__main__":
    main()
