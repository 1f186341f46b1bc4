"""Generation speed of the prompting loop, each comparison measured in one process, in turns:

1. images/s at N network evaluations per image (a batch of shapes captions, CFG on: each evaluation is one
   forward of conditional + unconditional copies), prompt prefill and VAE decode included;
2. the prefix KV cache against recomputing the prefix at every sampler step, for a long text prefix
   (cached: one prefill, then N forwards over the image tokens only; recompute: N x (prefill + image forward));
3. text decoding tokens/s with the KV cache against a full forward over the growing sequence per token
   (end to end: new tokens / time including the prompt's prefill).
"""

from __future__ import annotations

import torch

from mmgen.data.plan import KIND_TEXT
from mmgen.eval.timing import alternate
from mmgen.models.kv_cache import KVCache
from mmgen.sampling.interleaved import SamplingOptions

CAPTIONS = [
    "a large red circle",
    "a small blue square above a large green triangle",
    "a large white diamond",
    "a small yellow circle left of a small purple square",
]


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
