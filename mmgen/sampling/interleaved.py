"""The interleaved prompting loop: KV-cached text decoding that switches to few-step image sampling.

Rows of a batch advance in lockstep over one shared `KVCache` (slot i of every row is filled by the same
forward). A row with nothing to add in a forward gets padding tokens (document -1: invisible to everything),
so rows can decode text, draw images and stop at different times; rotary positions are tracked per row.
Rows that draw images at different times use more slots than one row's context: the cache grows for them,
while each row's positions stay within the context (`row_tokens`, checked before any work).

Per image, for the rows that opened one (<boi>):
  1. sample the latent grid with the flow map in N steps. Each step is ONE forward over the cached prefix in
     `scratch` mode: per row, the conditional noisy copy and the unconditional one (the mask isolates it)
     side by side, so classifier-free guidance is one batched forward and the prefix is never recomputed;
  2. append the clean latent to the cache with one forward at t = s = 0;
  3. feed <eoi> and continue decoding text, so the model can talk about what it drew.
"""

from __future__ import annotations

import numpy as np
import torch

from mmgen.data.documents import Document, Image
from mmgen.data.encoding import EncodedDoc
from mmgen.data.packing import Packer, PackSpec, to_model_pixels
from mmgen.data.plan import KIND_CLEAN, KIND_NOISY, TokenPlan
from mmgen.flowmap import clean_input
from mmgen.models.attention import FLEX_BLOCK
from mmgen.models.kv_cache import ContextOverflow, KVCache
from mmgen.models.patches import patchify, unpatchify
from mmgen.sampling.flow_map import cfg_combine, sample, time_grid
from mmgen.sampling.options import SamplingOptions
from mmgen.sampling.rows import UNCOND_IMAGE_ID, RowOutput, RowState, cat_plans, image_plan, pad_plan
from mmgen.sampling.text import next_token

__all__ = ["UNCOND_IMAGE_ID", "InterleavedSampler", "RowOutput", "SamplingOptions"]


class InterleavedSampler:
    def __init__(self, model, text_tok, image_tok):
        self.model, self.tok, self.vae = model, text_tok, image_tok
        c = model.config
        self.c = c
        self.sd = c.sigma_d
        self.G = c.image_tokens
        self.packer = Packer(text_tok, PackSpec.from_config(c, rows=1))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ prefill
    def encode_prompt(self, segments: list) -> EncodedDoc:
        """A prompt (text and images) as plan columns without </s>; images are context (clean copy only)."""
        segs = [s if isinstance(s, str) else Image(pixels=s, loss=False) for s in segments]
        doc = Document("prompt", segs)
        enc = self.packer.encode(doc, max_len=10**9)[0]
        n = len(enc) - 1  # drop </s>
        if n >= self.c.max_seq_len:
            raise ContextOverflow(
                f"the prompt takes {n} tokens, the model's context is {self.c.max_seq_len}: shorten the prompt"
            )
        return enc.prefix(n)

    @torch.no_grad()
    def _latents_of(self, images: list[Image]) -> torch.Tensor:
        """c_in(0) x0 as tokens [n, G, P] for prompt images, x0 scaled to std sigma_d as in training."""
        if not images:
            return torch.zeros(0, self.G, self.c.patch_dim, device=self.device)
        px = torch.from_numpy(np.stack([to_model_pixels(im, self.c.image_size) for im in images])).to(self.device)
        x0 = self.vae.normalize(self.vae.encode(px)) * self.sd
        return patchify(clean_input(x0, self.sd), self.c.patch_size)

    def forward(self, plan: TokenPlan, cache: KVCache | None, logits_at: torch.Tensor | None = None):
        """One forward of `plan` appended to `cache`; logits where `logits_at` (default: none)."""
        if logits_at is None:
            logits_at = torch.zeros(plan.shape, dtype=torch.bool, device=self.device)
        return self.model(**plan.model_inputs(), text_positions=logits_at, cache=cache)

    def row_tokens(self, prompt_len: int, opts: SamplingOptions) -> int:
        """Tokens one row may take: the prompt, its text, and per image <boi>, G tokens and <eoi>, then </s>."""
        return prompt_len + opts.max_new_tokens + opts.max_images * (self.G + 2) + 1

    def prefill(self, encoded: list[EncodedDoc], cache: KVCache):
        """Forward every prompt (`encode_prompt` output; right-padded with invisible padding); returns logits of
        each row's last token, the next rotary position and the number of images per row.

        With FlexAttention (`model.attention`, the model's `attention_backend`) the padded length is rounded up
        to whole 128-token tiles: the compiled kernel is specialised per length, so prompts of 1..128 tokens
        share one compilation instead of one each (padding slots are invisible storage, not positions)."""
        B, L = len(encoded), max(len(e) for e in encoded)
        if self.model.attention_backend(self.device) == "flex":  # within a capped cache's room
            room = cache.max_len - cache.length if cache.max_len is not None else 1 << 62
            L = max(L, min(-(-L // FLEX_BLOCK) * FLEX_BLOCK, room))
        plan = pad_plan(self.c, B, L, self.device)
        last = torch.zeros(B, L, dtype=torch.bool, device=self.device)
        for b, e in enumerate(encoded):
            n = len(e)
            plan.input_ids[b, :n] = torch.from_numpy(e.input_ids)
            plan.kind[b, :n] = torch.from_numpy(e.kind)
            plan.doc[b, :n] = 0
            plan.image[b, :n] = torch.from_numpy(e.image)
            plan.pos[:, b, :n] = torch.from_numpy(e.pos)
            if e.images:
                tok = self._latents_of(e.images)  # [n_images, G, P]
                at = np.flatnonzero(e.kind == KIND_CLEAN)
                plan.image_tokens[b, at] = tok[e.image[at], e.patch[at]]
            last[b, n - 1] = True
        out = self.forward(plan, cache, logits_at=last)
        return out.logits, [int(e.pos[0, -1]) + 1 for e in encoded], [len(e.images) for e in encoded]

    # ------------------------------------------------------------------ one text token per row
    def feed_tokens(self, tokens: torch.Tensor, active: torch.Tensor, pos: list[int], cache: KVCache):
        """Append one text token per row where `active` (bool [B]) at position pos[b]; returns their logits."""
        B = tokens.shape[0]
        plan = pad_plan(self.c, B, 1, self.device)
        for b in range(B):
            if active[b]:
                plan.input_ids[b, 0] = tokens[b]
                plan.doc[b, 0] = 0
                plan.pos[:, b, 0] = pos[b]
        return self.forward(plan, cache, logits_at=active[:, None].to(self.device)).logits

    # ------------------------------------------------------------------ one image for a set of rows
    @torch.no_grad()
    def draw_images(
        self,
        rows: torch.Tensor,
        pos: list[int],
        image_ids: list[int],
        cache: KVCache,
        opts: SamplingOptions,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Sample one image for every row in `rows` (its <boi> is already in the cache) and append the clean
        copy. Returns the normalised latents x0 [B, C, h, w] (rows outside `rows` are zeros)."""
        c, G, p = self.c, self.G, self.c.patch_size
        B = rows.shape[0]
        lat = (c.image_grid[0] * p, c.image_grid[1] * p)
        cond = image_plan(c, rows, pos, image_ids, KIND_NOISY, False, self.device)
        both = cat_plans(cond, image_plan(c, rows, pos, image_ids, KIND_NOISY, True, self.device))
        lo, hi = opts.guidance_interval

        def g(x_in: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            # one time per step for every row; a step outside the guidance interval runs the conditional copy only
            guided = opts.guidance != 1.0 and lo <= float(t[0]) <= hi
            plan = both if guided else cond
            n = plan.shape[1]
            tok = patchify(x_in, p)  # [B, G, P]
            plan.image_tokens = torch.cat([tok, tok], dim=1) if guided else tok
            plan.t = t[:, None].expand(B, n).to(self.device)
            plan.s = s[:, None].expand(B, n).to(self.device)
            with cache.scratch():
                out = self.forward(plan, cache).image  # [B, n, P]
            g_w = cfg_combine(out[:, :G], out[:, G:], opts.guidance) if guided else out
            return unpatchify(g_w, p, c.image_grid, c.latent_channels)

        method = opts.method or ("pushforward" if c.image_objective == "imm" else "euler")
        noise = torch.randn((B, c.latent_channels, *lat), generator=generator).to(self.device) * self.sd
        times = time_grid(opts.steps, c.t_max, c.t_min, opts.time_grid)  # the range the model was trained on
        x0 = sample(g, noise, times, self.sd, method, generator)
        x0 = x0 * rows[:, None, None, None].to(x0.dtype).to(self.device)
        clean = image_plan(c, rows, pos, image_ids, KIND_CLEAN, False, self.device)
        clean.image_tokens = patchify(clean_input(x0, self.sd), p)  # at t = s = 0
        self.forward(clean, cache)  # kept: later tokens attend to the clean image
        return x0

    @torch.no_grad()
    def decode_pixels(self, x0: torch.Tensor) -> np.ndarray:
        x = self.vae.decode(self.vae.denormalize(x0 / self.sd))
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    # ------------------------------------------------------------------ the loop
    @torch.no_grad()
    def run(self, prompts: list[list], opts: SamplingOptions) -> list[RowOutput]:
        """Continue every prompt: decode text (stopping at </s> or max_new_tokens), drawing an image whenever a
        row emits <boi> (or at once with `image_first`), up to `max_images` per row."""
        opts.validate()
        gen = torch.Generator().manual_seed(opts.seed)
        encoded = [self.encode_prompt(p) for p in prompts]
        cache = self._cache_for(encoded, opts)
        logits, pos, n_img = self.prefill(encoded, cache)
        rows = [RowState(pos=p, images=n) for p, n in zip(pos, n_img)]
        step = 0
        while not all(r.done for r in rows):
            tok = next_token(logits, opts.temperature, opts.top_k, opts.top_p, gen).cpu()
            if step == 0 and opts.image_first:
                tok[:] = self.c.boi_token_id
            step += 1
            logits, opening = self._text_step(rows, tok, logits, cache, opts)
            if bool(opening.any()):
                logits = self._image_step(rows, opening, logits, cache, opts, gen)
        for r in rows:
            r.flush_text(self.tok)
        return [r.out for r in rows]

    def _cache_for(self, encoded: list[EncodedDoc], opts: SamplingOptions) -> KVCache:
        """A cache for one row's worst case, plus the unconditional copies that live in scratch; rows that draw
        images at different times need more slots, and the cache grows for them. Fails before any work when a
        row may outgrow the model's context."""
        need = [self.row_tokens(len(e), opts) for e in encoded]
        for i, n in enumerate(need):
            if n > self.c.max_seq_len:
                raise ContextOverflow(
                    f"prompt {i + 1} takes {len(encoded[i])} tokens; with max_new_tokens={opts.max_new_tokens}"
                    f" and max_images={opts.max_images} it needs {n} > the model's context {self.c.max_seq_len}:"
                    f" shorten the prompt or lower max_new_tokens"
                )
        return KVCache.for_model(self.model, len(encoded), capacity=max(need) + opts.max_images * self.G)

    def _text_step(self, rows: list[RowState], tok: torch.Tensor, logits, cache: KVCache, opts: SamplingOptions):
        """Feed each unfinished row its sampled token; returns the next logits and the rows that opened an
        image (bool [B])."""
        c = self.c
        active = torch.tensor([not r.done for r in rows])
        for b in torch.nonzero(active).squeeze(1).tolist():
            r = rows[b]
            if tok[b] == c.boi_token_id and r.drawn >= opts.max_images:
                tok[b] = c.eos_token_id  # no image left to draw: end the row
            r.out.tokens.append(int(tok[b]))
            if tok[b] not in (c.boi_token_id, c.eos_token_id):
                r.pending.append(int(tok[b]))
                r.text += 1
        logits = self._scatter(logits, self.feed_tokens(tok, active, [r.pos for r in rows], cache), active)
        opening = active & (tok == c.boi_token_id)
        for b in torch.nonzero(active).squeeze(1).tolist():
            r = rows[b]
            r.pos += 1
            if tok[b] == c.eos_token_id or (r.text >= opts.max_new_tokens and not opening[b]):
                r.done = True
        return logits, opening

    def _image_step(self, rows: list[RowState], opening: torch.Tensor, logits, cache: KVCache, opts, gen):
        """Draw an image for the rows that opened one, then feed them <eoi> unless they are done."""
        c, which = self.c, torch.nonzero(opening).squeeze(1).tolist()
        for b in which:
            rows[b].flush_text(self.tok)
        x0 = self.draw_images(opening, [r.pos for r in rows], [r.images for r in rows], cache, opts, gen)
        pixels = self.decode_pixels(x0)
        for b in which:
            r = rows[b]
            r.out.segments.append(pixels[b])
            r.drawn += 1
            r.images += 1
            r.pos += max(c.image_grid)
            r.done = opts.stop_after_image or r.text >= opts.max_new_tokens
        feed = opening & torch.tensor([not r.done for r in rows])  # <eoi>, then text continues
        if bool(feed.any()):
            eoi = torch.full((len(rows),), c.eoi_token_id)
            logits = self._scatter(logits, self.feed_tokens(eoi, feed, [r.pos for r in rows], cache), feed)
            for b in torch.nonzero(feed).squeeze(1).tolist():
                rows[b].pos += 1
                rows[b].out.tokens.append(c.eoi_token_id)
        return logits

    @staticmethod
    def _scatter(old: torch.Tensor, new: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        if new is None:
            return old
        out = old.clone()
        out[rows.to(old.device)] = new
        return out
