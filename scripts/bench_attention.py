#!/usr/bin/env python
"""The attention kernel alone on the masks of a real packed batch: the model's FlexAttention mask against the
same rule packed into one code per token, simpler masks of the same block sparsity, and SDPA (dense mask,
causal). Candidates and their purpose: mmgen/eval/attention.py.

    python scripts/bench_attention.py --device cuda --preset base --seq-len 4096 --rows 4            # 32 px
    python scripts/bench_attention.py --device cuda --preset base --seq-len 4096 --rows 4 --image-size 128
    python scripts/bench_attention.py --preset tiny --seq-len 256 --rows 2   # CPU: forward only (no flex backward)

Runs the candidates in turns (medians) and writes JSON (default results/bench_attention.json): milliseconds
per forward (+ backward on CUDA), and TFLOPS of the useful work (the keys each query may see).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mmgen.eval.attention import CANDIDATES, candidate_fns
from mmgen.eval.backbone import packed_batch, visible_keys
from mmgen.eval.presets import TEXT_TOKENIZER, bench_config, preset
from mmgen.eval.timing import alternate, device_name
from mmgen.files import save_json
from mmgen.models.attention import MaskPlan
from mmgen.tokenizer.text import ensure_text_tokenizer

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="heads and head size of configs/model/<preset>.yaml")
    ap.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated")
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(REPO / "results" / "bench_attention.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    names = args.candidates.split(",")
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        ap.error(f"unknown candidate(s) {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}")
    tok = ensure_text_tokenizer(TEXT_TOKENIZER)
    cfg = bench_config(preset(args.preset), len(tok), args.seq_len, args.image_size)
    batch = packed_batch(tok, cfg, args.rows, args.seq_len)
    plan = MaskPlan.of(batch.to(device))
    keys = visible_keys(batch)
    dtype = torch.bfloat16 if cuda else torch.float32
    fns = candidate_fns(plan, cfg.n_heads, cfg.head_dim, names, device, dtype, backward=cuda)
    med = alternate(fns, args.repeats, device)
    # useful work: QK^T and PV over the keys each real (non-padding) query may see, 2 x 2 FLOPs per (query, key,
    # channel); the backward counted as 2.5x the forward (FlashAttention's convention: it recomputes the scores)
    queries = int((batch.doc >= 0).sum())
    useful = 4 * queries * cfg.n_heads * keys * cfg.head_dim * (3.5 if cuda else 1.0)
    rows = {n: {"ms": round(1e3 * med[n], 3), "useful_tflops": round(useful / med[n] / 1e12, 4)} for n in names}
    for n, r in rows.items():
        print(f"{n:<12} {r['ms']:9.3f} ms  {r['useful_tflops']:8.2f} useful TFLOPS")
    save_json(
        {
            "benchmark": "attention alone on a packed batch's masks"
            + (", forward + backward" if cuda else ", forward"),
            "device": device_name(device),
            "torch": torch.__version__,
            "dtype": str(dtype).removeprefix("torch."),
            "preset": args.preset,
            "heads": cfg.n_heads,
            "head_dim": cfg.head_dim,
            "rows": args.rows,
            "seq_len": args.seq_len,
            "image_size": args.image_size,
            "documents_per_row": round(float((batch.doc.amax(1) + 1).float().mean()), 1),
            "visible_keys_per_query": round(keys, 1),
            "useful_flops": "4 x real queries x heads x visible keys x head_dim"
            + (" x 3.5 (backward 2.5x)" if cuda else ""),
            "candidates": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
