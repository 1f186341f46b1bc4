#!/usr/bin/env python
"""Forward + backward throughput of the MoT backbone against a dense transformer of the same width and depth
(same process, same packed batch of shapes documents, alternating runs so machine noise hits both alike).

    python scripts/bench_backbone.py                       # tiny and small presets, CPU
    python scripts/bench_backbone.py --presets small --rows 8 --seq-len 1024 --device cuda --dtype bf16

Prints a table and writes results/bench_backbone.json. On a GPU it also reports model FLOPs utilisation
(MFU) in bf16, counting matmuls in every projection and the attention scores/values (6 N D + 12 L d T per
token for forward + backward) against the GPU's bf16 peak (--peak-tflops). `--dtype bf16` is the training
setting: bf16 autocast over fp32 weights. scripts/gpu_check.py reuses these functions (attention variants,
peak memory).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from mmgen.bench import device_name, save_json
from mmgen.config import ModelConfig, ShapesConfig, load_config
from mmgen.data.packing import Packer, PackSpec
from mmgen.data.plan import KIND_NOISY, KIND_TEXT, TokenPlan
from mmgen.data.shapes import ShapesGenerator
from mmgen.data.shards import Item
from mmgen.models.model import MMGenConfig, MMGenModel
from mmgen.tokenizer.text import SPECIAL_IDS, ensure_text_tokenizer

REPO = Path(__file__).resolve().parents[1]


def packed_batch(tok, cfg: MMGenConfig, rows: int, seq_len: int) -> TokenPlan:
    packer = Packer(tok, PackSpec.from_config(cfg, rows=rows, seq_len=seq_len))
    gen = ShapesGenerator(ShapesConfig(image_size=cfg.image_size))
    return next(packer.batches(Item(gen.document(i), 0, 0, i) for i in range(100000)))


def inputs(batch: TokenPlan, cfg: MMGenConfig, device):
    B, L = batch.shape
    noisy = batch.kind == KIND_NOISY
    t = torch.where(noisy, torch.rand(B, L), torch.zeros(B, L))
    tokens = torch.randn(B, L, cfg.patch_dim, device=device)
    return replace(batch, image_tokens=tokens, t=t, s=0.5 * t).to(device).model_inputs()


def flops_per_token(cfg: MMGenConfig, keys_per_query: float) -> float:
    """Training FLOPs per token: 6 x (matmul parameters per token) + attention 12 x depth x width x keys
    (QK^T and AV, forward and backward); embeddings excluded. keys_per_query = seq_len is the causal-agnostic
    upper bound; the mean number of keys a query may see (`visible_keys`) counts only the useful work."""
    per_layer = 4 * cfg.width * cfg.width + 3 * cfg.width * cfg.mlp_hidden  # one expert's projections
    return 6 * cfg.depth * per_layer + 12 * cfg.depth * cfg.width * keys_per_query


def visible_keys(batch) -> float:
    """Mean number of keys a real (non-padding) query attends to under the mask rule."""
    from mmgen.models.attention import MaskPlan, dense_mask

    real = batch.doc >= 0
    return float(dense_mask(MaskPlan.of(batch), batch.shape[1])[:, 0].sum(-1)[real].float().mean())


def variant_models(tok, preset: str, seq_len: int, image_size: int, variants: dict[str, dict], device):
    """{name: model} of one preset (configs/model/<preset>.yaml), each with its ModelConfig overrides (e.g.
    experts, attention), the same initial weights where shapes allow, fp32 on `device`."""
    mcfg = load_config(ModelConfig, REPO / "configs" / "model" / f"{preset}.yaml")
    models = {}
    for name, over in variants.items():
        cfg = MMGenConfig.from_model_config(
            ModelConfig(**{**mcfg.__dict__, **over}),
            vocab_size=len(tok),
            latent_channels=4,
            image_size=image_size,
            downsample=4,
            seq_len=seq_len,
            sigma_d=0.5,
            image_objective="imm",
            special_ids=SPECIAL_IDS,
        )
        torch.manual_seed(0)
        models[name] = MMGenModel(cfg).to(device).train()
    return models


def bench(models, x, steps: int, warmup: int, device, amp: torch.dtype | None = None):
    """Median-ready seconds per forward+backward of each model, run in turns (so drift and noise hit all
    alike), under autocast to `amp` when given; on CUDA also each model's peak allocated MB during its steps."""
    times = {k: [] for k in models}
    peak_mb: dict[str, float | None] = {k: None for k in models}
    cuda = device.type == "cuda"
    for i in range(warmup + steps):
        for name, model in models.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, amp or torch.float32, enabled=amp is not None):
                out = model(**x)
                loss = out.logits.float().pow(2).mean() + out.image.float().pow(2).mean()
            loss.backward()
            if cuda:
                torch.cuda.synchronize()
                peak_mb[name] = max(peak_mb[name] or 0.0, torch.cuda.max_memory_allocated(device) / 2**20)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    return times, peak_mb


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
    tok = ensure_text_tokenizer(REPO / "tokenizers/text/shapes.yaml")
    results = []
    for preset in args.presets:
        models = variant_models(
            tok,
            preset,
            args.seq_len,
            args.image_size,
            {"mot": {"experts": "mot"}, "dense": {"experts": "dense"}},
            device,
        )
        cfgs = {k: m.config for k, m in models.items()}
        batch = packed_batch(tok, cfgs["mot"], args.rows, args.seq_len)
        x = inputs(batch, cfgs["mot"], device)
        n_tok = int((batch.doc >= 0).sum())
        img_frac = float(((batch.kind != KIND_TEXT) & (batch.doc >= 0)).sum()) / n_tok
        times, _ = bench(models, x, args.steps, args.warmup, device, torch.bfloat16 if args.dtype == "bf16" else None)
        row = {
            "preset": preset,
            "width": cfgs["mot"].width,
            "depth": cfgs["mot"].depth,
            "tokens": n_tok,
            "image_token_fraction": round(img_frac, 3),
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
