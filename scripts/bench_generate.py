#!/usr/bin/env python
"""Generation speed of the prompting loop, each comparison measured in one process (alternating runs).

    python scripts/bench_generate.py                                  # tiny preset (random weights), CPU
    python scripts/bench_generate.py --model runs/shapes_tiny/release # a trained release
    python scripts/bench_generate.py --preset small --device cuda

1. images/s at N = 1, 2, 4, 8 network evaluations per image (a batch of shapes captions, CFG on: each
   evaluation is one forward of conditional + unconditional copies), prompt prefill and VAE decode included;
2. the prefix KV cache against recomputing the prefix at every sampler step, for a long text prefix
   (cached: one prefill, then N forwards over the image tokens only; recompute: N x (prefill + image forward));
3. text decoding tokens/s with the KV cache against a full forward over the growing sequence per token
   (end to end: new tokens / time including the prompt's prefill).

Timings depend on the weights only through the number of tokens, so random weights (the default) measure the
same work as a trained model; with --model the release's own sizes and context are used.
Prints a table and writes results/bench_generate.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from mmgen.bench import device_name, save_json
from mmgen.config import ModelConfig, load_config
from mmgen.config.schema import GUIDANCE
from mmgen.data.plan import KIND_TEXT
from mmgen.models.kv_cache import KVCache
from mmgen.models.model import MMGenConfig, MMGenModel
from mmgen.sampling.interleaved import SamplingOptions
from mmgen.sampling.pipeline import MMGenPipeline
from mmgen.tokenizer.text import SPECIAL_IDS, ensure_text_tokenizer
from mmgen.tokenizer_study.train import ensure_image_tokenizer

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = [
    "a large red circle",
    "a small blue square above a large green triangle",
    "a large white diamond",
    "a small yellow circle left of a small purple square",
]


def build_pipe(args, device) -> MMGenPipeline:
    if args.model:
        return MMGenPipeline.from_pretrained(args.model, device=device)
    text = ensure_text_tokenizer(REPO / "tokenizers/text/shapes.yaml")
    image = ensure_image_tokenizer(REPO / "tokenizers/image/shapes_kl.yaml").to(device).eval()
    mcfg = load_config(ModelConfig, REPO / "configs" / "model" / f"{args.preset}.yaml")
    cfg = MMGenConfig.from_model_config(
        mcfg,
        vocab_size=len(text),
        latent_channels=image.latent_channels,
        image_size=32,
        downsample=image.downsample,
        seq_len=args.context,
        sigma_d=0.5,
        image_objective="imm",
        special_ids=SPECIAL_IDS,
    )
    torch.manual_seed(0)
    return MMGenPipeline(MMGenModel(cfg).to(device).eval(), text, image)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def alternate(fns: dict, repeats: int, device) -> dict[str, float]:
    """Median seconds of each function, run in turns (after one warm-up round) so noise hits all alike."""
    times = {k: [] for k in fns}
    for i in range(repeats + 1):
        for k, fn in fns.items():
            dt = timed(fn, device)
            if i:
                times[k].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def images_per_s(pipe, batch: int, steps_list: list[int], repeats: int, device) -> list[dict]:
    prompts = [[CAPTIONS[i % len(CAPTIONS)]] for i in range(batch)]

    def run(n):
        return lambda: pipe.sampler.run(prompts, SamplingOptions(steps=n, image_first=True, stop_after_image=True))

    med = alternate({n: run(n) for n in steps_list}, repeats, device)
    return [
        {"steps": n, "seconds_per_batch": round(med[n], 4), "images_per_s": round(batch / med[n], 2)}
        for n in steps_list
    ]


def long_prefix(pipe, n_tokens: int) -> list[str]:
    words = " ".join(CAPTIONS).split()
    text, i = [], 0
    while len(pipe.text_tok(" ".join(text))["input_ids"]) < n_tokens:
        text.append(words[i % len(words)])
        i += 1
    return [" ".join(text)]


def prefix_cache_speedup(pipe, prefix_tokens: int, steps: int, repeats: int, device) -> dict:
    """Sample one image after a long text prefix with the prefix cached, and with the prefix recomputed at
    every step (a fresh cache, prefill, one image forward: what a cache-less sampler pays)."""
    s = pipe.sampler
    prompt = long_prefix(pipe, prefix_tokens)
    opts = SamplingOptions(steps=steps)
    c = pipe.model.config

    def image_after_prefix(n_steps: int) -> None:
        cache = KVCache.for_model(pipe.model, 1, c.max_seq_len)
        _, pos, n_img = s.prefill([s.encode_prompt(prompt)], cache)
        rows = torch.ones(1, dtype=torch.bool)
        s.feed_tokens(torch.tensor([c.boi_token_id]), rows, pos, cache)
        pos = [pos[0] + 1]
        gen = torch.Generator().manual_seed(0)
        s.draw_images(rows, pos, n_img, cache, SamplingOptions(**{**opts.__dict__, "steps": n_steps}), gen)

    def cached():
        with torch.no_grad():
            image_after_prefix(steps)

    def recompute():
        with torch.no_grad():
            for _ in range(steps):
                image_after_prefix(1)

    n_prefix = len(s.encode_prompt(prompt))
    med = alternate({"cached": cached, "recompute": recompute}, repeats, device)
    return {
        "prefix_tokens": n_prefix,
        "image_tokens": c.image_tokens,
        "steps": steps,
        "cached_s": round(med["cached"], 4),
        "recompute_s": round(med["recompute"], 4),
        "speedup": round(med["recompute"] / med["cached"], 2),
    }


def text_decoding(pipe, prompt_tokens: int, new_tokens: int, repeats: int, device) -> dict:
    """Greedy decoding of `new_tokens` tokens (no early stop) with the KV cache, and with a full forward over
    the whole sequence per token. Checks that both produce the same tokens."""
    s, c = pipe.sampler, pipe.model.config
    prompt = long_prefix(pipe, prompt_tokens)
    cols = s.encode_prompt(prompt)
    n0 = len(cols)
    out: dict[str, list[int]] = {}

    def cached():
        with torch.no_grad():
            cache = KVCache.for_model(pipe.model, 1, c.max_seq_len)
            logits, pos, _ = s.prefill([s.encode_prompt(prompt)], cache)
            toks, active = [], torch.ones(1, dtype=torch.bool)
            for _ in range(new_tokens):
                tok = logits.argmax(-1).view(1).cpu()
                toks.append(int(tok))
                logits = s.feed_tokens(tok, active, pos, cache)
                pos = [pos[0] + 1]
            out["cached"] = toks

    def uncached():
        with torch.no_grad():
            ids = torch.as_tensor(cols.input_ids, device=device)[None]
            toks = []
            for _ in range(new_tokens):
                L = ids.shape[1]
                pos = torch.arange(L, device=device)[None, None].expand(3, 1, L)
                zeros = torch.zeros(1, L, dtype=torch.long, device=device)
                last = torch.zeros(1, L, dtype=torch.bool, device=device)
                last[0, -1] = True
                logits = pipe.model(
                    input_ids=ids, kind=zeros + KIND_TEXT, doc=zeros, image=zeros - 1, pos=pos, text_positions=last
                ).logits
                tok = int(logits[-1].argmax())
                toks.append(tok)
                ids = torch.cat([ids, torch.tensor([[tok]], device=device)], dim=1)
            out["uncached"] = toks

    med = alternate({"cached": cached, "uncached": uncached}, repeats, device)
    assert out["cached"] == out["uncached"], "cached and uncached greedy decoding disagree"
    return {
        "prompt_tokens": n0,
        "new_tokens": new_tokens,
        "cached_tokens_per_s": round(new_tokens / med["cached"], 1),
        "uncached_tokens_per_s": round(new_tokens / med["uncached"], 1),
        "speedup": round(med["uncached"] / med["cached"], 2),
        "same_tokens": True,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="release folder (default: random weights of --preset)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--context", type=int, default=2048, help="context of the random-weight model")
    ap.add_argument("--batch", type=int, default=16, help="images per batch for images/s")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--prefix-tokens", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(REPO / "results" / "bench_generate.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    pipe = build_pipe(args, device)
    c = pipe.model.config
    prefix = min(args.prefix_tokens, c.max_seq_len - c.image_tokens * 2 - 8)
    new = min(args.new_tokens, c.max_seq_len - prefix - 2)

    imgs = images_per_s(pipe, args.batch, args.steps, args.repeats, device)
    for r in imgs:
        print(
            f"N = {r['steps']}: {r['images_per_s']:8.1f} images/s ({r['seconds_per_batch']:.3f} s per batch of {args.batch})"
        )
    pc = prefix_cache_speedup(pipe, prefix, 4, args.repeats, device)
    print(
        f"prefix cache ({pc['prefix_tokens']} prefix tokens, N = 4): cached {pc['cached_s']:.3f} s, recompute "
        f"{pc['recompute_s']:.3f} s -> {pc['speedup']:.2f}x"
    )
    td = text_decoding(pipe, prefix, new, args.repeats, device)
    print(
        f"text decoding ({td['prompt_tokens']} prompt + {td['new_tokens']} new tokens): cached "
        f"{td['cached_tokens_per_s']:.1f} tok/s, uncached {td['uncached_tokens_per_s']:.1f} tok/s -> {td['speedup']:.2f}x"
    )
    out = {
        "benchmark": "generation speed: images/s per N, prefix KV cache vs recompute, cached vs uncached text decoding",
        "device": device_name(device),
        "model": args.model or f"{args.preset} preset, random weights, context {c.max_seq_len}",
        "params": sum(p.numel() for p in pipe.model.parameters()),
        "image_tokens": c.image_tokens,
        "batch": args.batch,
        "repeats": args.repeats,
        "guidance": GUIDANCE,
        "threads": torch.get_num_threads(),
        "images_per_s": imgs,
        "prefix_cache": pc,
        "text_decoding": td,
    }
    save_json(out, args.out)


if __name__ == "__main__":
    main()
