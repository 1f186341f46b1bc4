"""Prompting: cached decoding equals uncached decoding, the prefix cache equals full recompute, batched CFG
equals two forwards, determinism, and an error message for every bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_model, tiny_sizes
from PIL import Image

from mmgen.data.plan import KIND_CLEAN, KIND_NOISY, KIND_TEXT, TokenPlan
from mmgen.models.kv_cache import ContextOverflow
from mmgen.models.patches import patchify, unpatchify
from mmgen.sampling.flow_map import cfg_combine, sample, time_grid
from mmgen.sampling.interleaved import SamplingOptions
from mmgen.sampling.pipeline import MMGenPipeline, PromptError
from mmgen.tokenizer.text import SPECIAL_IDS


@pytest.fixture(scope="module")
def pipe(tiny_assets, tmp_path_factory):
    text, image, model = tiny_model(tiny_assets, **tiny_sizes(depth=2, width=64, image_size=16, max_seq_len=160))
    model.eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial weights everywhere, so every path matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return MMGenPipeline(model, text, image)


def _full_forward(model, plan: TokenPlan, image_values, t, s, uncond):
    return model(**replace(plan, image_tokens=image_values, t=t, s=s, uncond=uncond).model_inputs())


def _prompt_cols(pipe, segs) -> TokenPlan:
    """The prompt as a one-row plan of one document."""
    enc = pipe.sampler.encode_prompt(segs)
    cols = {k: torch.from_numpy(getattr(enc, k))[None] for k in ("input_ids", "kind", "image", "patch")}
    return TokenPlan(**cols, pos=torch.from_numpy(enc.pos)[:, None], doc=torch.zeros(1, len(enc), dtype=torch.long))


def test_cached_text_decoding_equals_uncached(pipe):
    prompt = "a large red circle above"
    # reference: full forward over the whole sequence for every new token, greedy
    cols = _prompt_cols(pipe, [prompt])
    ids, pos = cols.input_ids[0].tolist(), cols.pos[0, 0].tolist()
    ref = []
    for _ in range(12):
        L = len(ids)
        c = TokenPlan(
            input_ids=torch.tensor([ids]),
            kind=torch.zeros(1, L, dtype=torch.long),
            doc=torch.zeros(1, L, dtype=torch.long),
            image=torch.full((1, L), -1),
            pos=torch.tensor(pos)[None, None].expand(3, 1, L),
        )
        with torch.no_grad():
            nxt = int(_full_forward(pipe.model, c, None, None, None, None).logits[-1].argmax())
        if nxt == SPECIAL_IDS["boi"]:
            nxt = SPECIAL_IDS["eos"]  # max_images=0: the pipeline ends the row instead of opening an image
        ref.append(nxt)
        if nxt == SPECIAL_IDS["eos"]:
            break
        ids.append(nxt)
        pos.append(pos[-1] + 1)
    assert pipe.sampler.run([[prompt]], SamplingOptions(max_new_tokens=12, max_images=0))[0].tokens == ref


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_cached_image_sampling_equals_full_recompute(pipe, guidance):
    """Each sampler step recomputes only the image tokens over the cached prefix; the reference recomputes
    prefix + noisy copies (conditional and unconditional) in one uncached forward per step."""
    c = pipe.model.config
    prompt = "a small blue square left of a large green circle"
    opts = SamplingOptions(steps=3, guidance=guidance, image_first=True, stop_after_image=True, seed=3)
    got = pipe.sampler.run([[prompt]], opts)[0].segments[-1]

    cols = _prompt_cols(pipe, [prompt])
    L0, G, P = cols.input_ids.shape[1], c.image_tokens, c.patch_size
    boi_pos = int(cols.pos[0, 0, -1]) + 1
    p0 = boi_pos + 1
    grid_r, grid_c = torch.arange(G) // c.image_grid[1], torch.arange(G) % c.image_grid[1]
    n_img = 2 if guidance != 1.0 else 1
    L = L0 + 1 + n_img * G
    ids = torch.full((1, L), c.pad_token_id)
    ids[0, :L0], ids[0, L0] = cols.input_ids[0], c.boi_token_id
    kind = torch.full((1, L), KIND_TEXT)
    kind[0, L0 + 1 :] = KIND_NOISY
    image = torch.full((1, L), -1)
    image[0, L0 + 1 : L0 + 1 + G] = 0
    if n_img == 2:
        image[0, L0 + 1 + G :] = 1 << 20
    uncond = torch.zeros(1, L, dtype=torch.bool)
    uncond[0, L0 + 1 + G :] = True
    pos = torch.zeros(3, 1, L, dtype=torch.long)
    pos[:, 0, :L0] = cols.pos[:, 0]
    pos[:, 0, L0] = boi_pos
    for k in range(n_img):
        sl = slice(L0 + 1 + k * G, L0 + 1 + (k + 1) * G)
        pos[0, 0, sl], pos[1, 0, sl], pos[2, 0, sl] = p0, p0 + grid_r, p0 + grid_c
    full = TokenPlan(input_ids=ids, kind=kind, doc=torch.zeros(1, L, dtype=torch.long), image=image, pos=pos)

    def g(x_in, t, s):
        tok = patchify(x_in, P)
        vals = torch.zeros(1, L, c.patch_dim)
        tt, ss = torch.zeros(1, L), torch.zeros(1, L)
        for k in range(n_img):
            sl = slice(L0 + 1 + k * G, L0 + 1 + (k + 1) * G)
            vals[0, sl], tt[0, sl], ss[0, sl] = tok[0], t[0], s[0]
        out = _full_forward(pipe.model, full, vals, tt, ss, uncond).image[0, L0 + 1 :]
        gw = cfg_combine(out[:G], out[G:], guidance) if n_img == 2 else out[:G]
        return unpatchify(gw[None], P, c.image_grid, c.latent_channels)

    gen = torch.Generator().manual_seed(3)
    noise = torch.randn((1, c.latent_channels, 4, 4), generator=gen) * c.sigma_d
    with torch.no_grad():
        x0 = sample(g, noise, time_grid(3, 0.994), c.sigma_d, "pushforward")
        ref = pipe.sampler.decode_pixels(x0)[0]
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


def test_batched_cfg_equals_two_forwards(pipe):
    """Conditional and unconditional copies side by side in one forward give the G of two separate forwards."""
    c = pipe.model.config
    cols = _prompt_cols(pipe, ["a large white diamond"])
    L0, G = cols.input_ids.shape[1], c.image_tokens
    x = torch.randn(1, G, c.patch_dim)

    def build(copies):  # copies: list of (image id, uncond)
        L = L0 + len(copies) * G
        kind = torch.cat([torch.zeros(1, L0, dtype=torch.long), torch.full((1, len(copies) * G), KIND_NOISY)], 1)
        image = torch.cat([torch.full((1, L0), -1)] + [torch.full((1, G), i) for i, _ in copies], 1)
        unc = torch.cat([torch.zeros(1, L0, dtype=torch.bool)] + [torch.full((1, G), u) for _, u in copies], 1)
        ids = torch.cat([cols.input_ids, torch.full((1, len(copies) * G), c.pad_token_id)], 1)
        pos = torch.cat(
            [cols.pos]
            + [torch.stack([torch.full((G,), L0), L0 + torch.arange(G) // 2, L0 + torch.arange(G) % 2])[:, None]]
            * len(copies),
            -1,
        )
        vals = torch.cat([torch.zeros(1, L0, c.patch_dim)] + [x] * len(copies), 1)
        t = torch.cat([torch.zeros(1, L0), torch.full((1, len(copies) * G), 0.7)], 1)
        with torch.no_grad():
            out = pipe.model(
                input_ids=ids,
                kind=kind,
                doc=torch.zeros(1, L, dtype=torch.long),
                image=image,
                pos=pos,
                image_tokens=vals,
                t=t,
                s=t * 0.5,
                uncond=unc,
            ).image[0, L0:]
        return out.split(G)

    both = build([(0, False), (1 << 20, True)])
    cond = build([(0, False)])[0]
    unc = build([(1 << 20, True)])[0]
    torch.testing.assert_close(both[0], cond, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both[1], unc, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(cond, unc)


def test_guidance_interval_guides_only_the_steps_inside_it(pipe):
    """N = 2 uniform steps start at t = 0.994 and 0.497. An interval holding neither is plain conditional
    sampling (w = 1); one holding both is the default; one holding the second step only differs from both."""
    kw = dict(steps=2, image_first=True, stop_after_image=True, guidance=4.0, seed=5)

    def image(**extra):
        return pipe(["a small red circle"], **(kw | extra))[0].images[0]

    plain, full = image(guidance=1.0), image()
    assert np.array_equal(image(guidance_interval=(0.0, 0.3)), plain)
    assert np.array_equal(image(guidance_interval=(0.4, 1.0)), full)
    late = image(guidance_interval=(0.4, 0.6))
    assert not np.array_equal(late, plain) and not np.array_equal(late, full)
    with pytest.raises(PromptError, match="guidance_interval"):
        pipe(["x"], guidance_interval=(0.5, 0.2))


def test_same_seed_same_output_and_interleaving(pipe, tmp_path):
    kw = dict(steps=2, image_first=True, max_images=2, max_new_tokens=6, temperature=1.0, top_k=20, seed=7)
    a = pipe(["a small red circle", "a large blue square"], **kw)
    b = pipe(["a small red circle", "a large blue square"], **kw)
    for x, y in zip(a, b):
        assert x.text == y.text and all(np.array_equal(i, j) for i, j in zip(x.images, y.images))
    assert all(len(r.images) >= 1 and r.images[0].shape == (16, 16, 3) for r in a)
    c = pipe(["a small red circle", "a large blue square"], **(kw | {"seed": 8}))
    assert not np.array_equal(a[0].images[0], c[0].images[0])
    page = a[0].save(tmp_path)
    assert page.is_file() and "result-prompt" not in page.read_text() and ".png" in page.read_text()


def test_prompt_images_enter_as_clean_context(pipe, tmp_path):
    img = np.zeros((40, 24, 3), dtype=np.uint8)  # another size: centre-cropped and resized
    img[10:20, 5:15] = (220, 40, 40)
    Image.fromarray(img).save(tmp_path / "in.png")
    res = pipe(
        [f"a small red square <image:{tmp_path / 'in.png'}> the same square in blue"],
        steps=1,
        image_first=True,
        stop_after_image=True,
    )[0]
    assert len(res.prompt) == 3 and res.prompt[1].shape == (40, 24, 3) and len(res.images) == 1
    enc = pipe.sampler.encode_prompt(res.prompt)
    assert len(enc.images) == 1 and (enc.kind == KIND_CLEAN).sum() == pipe.model.config.image_tokens
    assert (enc.kind == KIND_NOISY).sum() == 0


def test_bad_inputs_fail_before_work(pipe, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    cases = [
        (dict(prompts=["x <image:/no/such.png>"]), PromptError, "image not found: /no/such.png"),
        (dict(prompts=[f"x <image:{tmp_path / 'broken.png'}>"]), PromptError, "cannot read image"),
        (dict(prompts=["x"], steps=0), PromptError, "steps 0 is out of range"),
        (dict(prompts=["x"], guidance=50.0), PromptError, "guidance 50.0 is out of range"),
        (dict(prompts=["x"], stepz=2), PromptError, "unknown option"),
        (dict(prompts=[" ".join(["a large red circle"] * 60)]), ContextOverflow, "context"),
        (dict(prompts=["x"], max_new_tokens=500), ContextOverflow, "lower max_new_tokens"),
        (dict(prompts=['[{"text": "a"}, {"img": 1}]']), PromptError, "a segment must be"),
    ]
    for kw, exc, msg in cases:
        prompts = kw.pop("prompts")
        with pytest.raises(exc, match=msg):
            pipe(prompts, **kw)


def test_tokenizer_mismatch_is_refused(pipe, tiny_assets):
    from mmgen.config import CorpusSpec, TextTokenizerRecipe
    from mmgen.tokenizer.text import train_text_tokenizer

    other = train_text_tokenizer(
        TextTokenizerRecipe(name="o", vocab_size=300, corpora=[CorpusSpec("shapes", 500)]), tiny_assets / "other_text"
    )
    with pytest.raises(ValueError, match="tokenizers do not match.*300 tokens"):
        MMGenPipeline(pipe.model, other, pipe.image_tok)


def test_text_after_an_image_sees_its_clean_copy(pipe, monkeypatch):
    """After drawing, the clean latent is appended at t = s = 0; decoding then equals an uncached forward over
    prompt + <boi> + clean image + <eoi>."""
    c = pipe.model.config
    captured = {}
    real = pipe.sampler.draw_images

    def spy(*a, **k):
        captured["x0"] = real(*a, **k)
        return captured["x0"]

    monkeypatch.setattr(pipe.sampler, "draw_images", spy)
    prompt = "a large green triangle"
    rows = pipe.sampler.run([[prompt]], SamplingOptions(steps=2, image_first=True, max_images=1, max_new_tokens=6))
    tokens = rows[0].tokens
    after = tokens[tokens.index(c.eoi_token_id) + 1 :]
    assert after, "decoding continued after the image"

    cols = _prompt_cols(pipe, [prompt])
    L0, G = cols.input_ids.shape[1], c.image_tokens
    p_boi = int(cols.pos[0, 0, -1]) + 1
    p0 = p_boi + 1
    ids = cols.input_ids[0].tolist() + [c.boi_token_id] + [c.pad_token_id] * G + [c.eoi_token_id]
    kind = [KIND_TEXT] * (L0 + 1) + [KIND_CLEAN] * G + [KIND_TEXT]
    image = [-1] * (L0 + 1) + [0] * G + [-1]
    gr, gc = torch.arange(G) // c.image_grid[1], torch.arange(G) % c.image_grid[1]
    t_pos = cols.pos[0, 0].tolist() + [p_boi] + [p0] * G + [p0 + max(c.image_grid)]
    h_pos = cols.pos[1, 0].tolist() + [p_boi] + (p0 + gr).tolist() + [p0 + max(c.image_grid)]
    w_pos = cols.pos[2, 0].tolist() + [p_boi] + (p0 + gc).tolist() + [p0 + max(c.image_grid)]
    vals = torch.zeros(1, len(ids), c.patch_dim)
    vals[0, L0 + 1 : L0 + 1 + G] = patchify(captured["x0"] / c.sigma_d, c.patch_size)[0]
    ref = []
    for _ in range(len(after)):
        L = len(ids)
        full = TokenPlan(
            input_ids=torch.tensor([ids]),
            kind=torch.tensor([kind]),
            doc=torch.zeros(1, L, dtype=torch.long),
            image=torch.tensor([image]),
            pos=torch.tensor([t_pos, h_pos, w_pos])[:, None],
        )
        with torch.no_grad():
            v = torch.cat([vals, torch.zeros(1, L - vals.shape[1], c.patch_dim)], 1)
            nxt = int(
                _full_forward(pipe.model, full, v, torch.zeros(1, L), torch.zeros(1, L), None).logits[-1].argmax()
            )
        ref.append(nxt)
        ids, kind, image = ids + [nxt], kind + [KIND_TEXT], image + [-1]
        for lst in (t_pos, h_pos, w_pos):
            lst.append(lst[-1] + 1)
    n = min(len(ref), len(after))
    assert after[:n] == ref[:n]


def test_generation_benchmark_measures_the_same_work_both_ways(pipe):
    """bench_generate's comparisons (mmgen/eval/generation.py): cached and uncached greedy decoding produce the
    same tokens (the harness asserts it), and the prefix-cache comparison runs the cached sampler against
    per-step recompute."""
    from mmgen.eval import generation as bench

    cpu = torch.device("cpu")
    td = bench.text_decoding(pipe, prompt_tokens=20, new_tokens=6, repeats=1, device=cpu)
    assert td["same_tokens"] and td["new_tokens"] == 6 and td["prompt_tokens"] >= 20
    pc = bench.prefix_cache_speedup(pipe, prefix_tokens=40, steps=2, repeats=1, device=cpu)
    assert pc["prefix_tokens"] >= 40 and pc["steps"] == 2 and pc["cached_s"] > 0 and pc["recompute_s"] > 0
    rows = bench.images_per_s(pipe, batch=2, steps_list=[1, 2], repeats=1, device=cpu)
    assert [r["steps"] for r in rows] == [1, 2] and all(r["images_per_s"] > 0 for r in rows)


def test_rows_drawing_at_different_times_outgrow_one_row_context(pipe, monkeypatch):
    """Lockstep rows that open images at different steps fill more cache slots than one row's context (every
    forward takes a slot in every row). The cache grows for them: the run succeeds, and its images equal a
    run whose cache was large enough from the start."""
    import mmgen.sampling.interleaved as il
    from mmgen.models.kv_cache import KVCache

    c = pipe.model.config
    B, word = 4, pipe.text_tok.convert_tokens_to_ids(pipe.text_tok.tokenize("circle")[0])
    calls = {"n": 0}

    def scripted(logits, temperature, top_k, top_p, generator):  # row b opens images at steps b+1 and b+6
        k = calls["n"] = calls["n"] + 1
        return torch.tensor([c.boi_token_id if k in (b + 1, b + 6) else word for b in range(B)])

    monkeypatch.setattr(il, "next_token", scripted)
    prompts = ["a small red circle"] * B
    prompt_len = len(pipe.sampler.encode_prompt(["a small red circle"]))
    max_new = c.max_seq_len - prompt_len - 2 * (c.image_tokens + 2) - 1  # one row's budget fills the context
    kw = dict(steps=2, max_images=2, max_new_tokens=max_new, seed=3)
    caches = []
    real_for_model = KVCache.for_model

    def spy(roomy: bool):
        def for_model(model, batch, max_len=None, capacity=None):
            caches.append(real_for_model(model, batch, max_len, 4 * c.max_seq_len if roomy else capacity))
            return caches[-1]

        return staticmethod(for_model)

    monkeypatch.setattr(KVCache, "for_model", spy(roomy=False))
    grown = pipe(prompts, **kw)
    first = max_new + prompt_len + 2 * (c.image_tokens + 2) + 1 + 2 * c.image_tokens  # the first allocation
    assert caches[-1].length > first and caches[-1].capacity > first  # the lockstep rows outgrew it
    calls["n"] = 0
    monkeypatch.setattr(KVCache, "for_model", spy(roomy=True))
    roomy = pipe(prompts, **kw)
    assert caches[-1].capacity == 4 * c.max_seq_len  # never grew
    for x, y in zip(grown, roomy):
        assert len(x.images) == 2 and all(np.array_equal(i, j) for i, j in zip(x.images, y.images))
        assert x.text == y.text
