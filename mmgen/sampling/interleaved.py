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

from dataclasses import dataclass, field

import numpy as np
import torch

from mmgen.config.schema import GUIDANCE, STEPS, TIME_GRID, TIME_GRIDS, SampleConfig
from mmgen.data.documents import Document, Image
from mmgen.data.packing import Packer, PackSpec
from mmgen.data.plan import KIND_CLEAN, KIND_NOISY, KIND_TEXT
from mmgen.flowmap import clean_input
from mmgen.models.attention import FLEX_BLOCK
from mmgen.models.kv_cache import ContextOverflow, KVCache
from mmgen.models.patches import patchify, unpatchify
from mmgen.sampling.flow_map import cfg_combine, sample, time_grid
from mmgen.sampling.text import next_token

UNCOND_IMAGE_ID = 1 << 20  # image ids of the unconditional copies (never a real image's id)


@dataclass
class SamplingOptions:
    steps: int = STEPS  # network evaluations per image
    guidance: float = GUIDANCE  # classifier-free guidance weight w (1 = conditional only, 0 = unconditional)
    # guidance acts on steps that start at a time t in [lo, hi] (Kynkaanniemi et al. 2024, "guidance in a
    # limited interval"); other steps are conditional only. The default guides every step.
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    time_grid: str = TIME_GRID
    method: str | None = None  # pushforward (IMM) / euler (flow matching); default from the model
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_images: int = 1  # images a row may generate
    image_first: bool = False  # open an image right after the prompt instead of decoding text first
    stop_after_image: bool = False

    def validate(self) -> None:
        for name, allowed in SampleConfig.RANGES.items():  # steps, guidance, temperature, top_k, top_p, ...
            if (value := getattr(self, name)) not in allowed:
                raise ValueError(f"{name} {value} is out of range (allowed: {allowed})")
        if self.time_grid not in TIME_GRIDS:
            raise ValueError(f"time_grid must be {' or '.join(TIME_GRIDS)}, got {self.time_grid!r}")
        lo, hi = self.guidance_interval
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"guidance_interval must satisfy 0 <= lo < hi <= 1, got {self.guidance_interval}")
        if self.max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {self.max_images}")
        if self.method not in (None, "pushforward", "euler", "restart"):
            raise ValueError(f"unknown sampler {self.method!r}: pushforward, euler or restart")


@dataclass
class RowOutput:
    segments: list[str | np.ndarray] = field(default_factory=list)  # generated text and images (H, W, 3) uint8
    tokens: list[int] = field(default_factory=list)


class InterleavedSampler:
    def __init__(self, model, text_tok, image_tok):
        self.model, self.tok, self.vae = model, text_tok, image_tok
        c = model.config
        self.c = c
        self.sd = c.sigma_d
        self.G = c.image_tokens
        self.packer = Packer(
            text_tok,
            PackSpec(
                c.max_seq_len,
                1,
                c.image_size,
                tuple(c.image_grid),
                c.bos_token_id,
                c.eos_token_id,
                c.pad_token_id,
                c.boi_token_id,
                c.eoi_token_id,
            ),
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ prefill
    def encode_prompt(self, segments: list) -> tuple[dict, list[Image]]:
        """A prompt (text and images) as plan columns without </s>; images are context (clean copy only)."""
        segs = [s if isinstance(s, str) else Image(pixels=s, loss=False) for s in segments]
        doc = Document("prompt", segs)
        enc = self.packer.encode(doc, max_len=10**9)[0]
        n = len(enc) - 1  # drop </s>
        if n >= self.c.max_seq_len:
            raise ContextOverflow(
                f"the prompt takes {n} tokens, the model's context is {self.c.max_seq_len}: shorten the prompt"
            )
        cols = {
            "ids": enc.ids[:n],
            "kind": enc.kind[:n],
            "image": enc.image[:n],
            "patch": enc.patch[:n],
            "pos": enc.pos[:, :n],
        }
        return cols, enc.images

    @torch.no_grad()
    def _latents_of(self, images: list[Image]) -> torch.Tensor:
        """c_in(0) x0 as tokens [n, G, P] for prompt images, x0 scaled to std sigma_d as in training."""
        from mmgen.data.packing import to_model_pixels

        if not images:
            return torch.zeros(0, self.G, self.c.patch_dim, device=self.device)
        px = torch.from_numpy(np.stack([to_model_pixels(im, self.c.image_size) for im in images])).to(self.device)
        x0 = self.vae.normalize(self.vae.encode(px)) * self.sd
        return patchify(clean_input(x0, self.sd), self.c.patch_size)

    def _forward(self, cols: dict[str, torch.Tensor], cache: KVCache, logits_at: torch.Tensor | None = None):
        B, L = cols["ids"].shape
        dev = self.device
        zeros = torch.zeros(B, L, device=dev)
        return self.model(
            input_ids=cols["ids"],
            kind=cols["kind"],
            doc=cols["doc"],
            image=cols["image"],
            pos=cols["pos"],
            image_tokens=cols.get("values", torch.zeros(B, L, self.c.patch_dim, device=dev)),
            t=cols.get("t", zeros),
            s=cols.get("s", zeros),
            uncond=cols.get("uncond"),
            text_positions=logits_at if logits_at is not None else torch.zeros(B, L, dtype=torch.bool, device=dev),
            cache=cache,
        )

    def _pad_cols(self, B: int, L: int) -> dict[str, torch.Tensor]:
        dev = self.device
        return {
            "ids": torch.full((B, L), self.c.pad_token_id, dtype=torch.long, device=dev),
            "kind": torch.full((B, L), KIND_TEXT, dtype=torch.long, device=dev),
            "doc": torch.full((B, L), -1, dtype=torch.long, device=dev),
            "image": torch.full((B, L), -1, dtype=torch.long, device=dev),
            "pos": torch.zeros((3, B, L), dtype=torch.long, device=dev),
            "values": torch.zeros((B, L, self.c.patch_dim), device=dev),
            "uncond": torch.zeros((B, L), dtype=torch.bool, device=dev),
        }

    def row_tokens(self, prompt_len: int, opts: SamplingOptions) -> int:
        """Tokens one row may take: the prompt, its text, and per image <boi>, G tokens and <eoi>, then </s>."""
        return prompt_len + opts.max_new_tokens + opts.max_images * (self.G + 2) + 1

    def prefill(self, encoded: list[tuple[dict, list[Image]]], cache: KVCache):
        """Forward every prompt (`encode_prompt` output; right-padded with invisible padding); returns logits of
        each row's last token, the next rotary position and the number of images per row.

        With FlexAttention (`model.attention`, the model's `attention_backend`) the padded length is rounded up
        to whole 128-token tiles: the compiled kernel is specialised per length, so prompts of 1..128 tokens
        share one compilation instead of one each (padding slots are invisible storage, not positions)."""
        B, L = len(encoded), max(len(e[0]["ids"]) for e in encoded)
        if self.model.attention_backend(self.device) == "flex":  # within a capped cache's room
            room = cache.max_len - cache.length if cache.max_len is not None else 1 << 62
            L = max(L, min(-(-L // FLEX_BLOCK) * FLEX_BLOCK, room))
        cols = self._pad_cols(B, L)
        last = torch.zeros(B, L, dtype=torch.bool, device=self.device)
        pos_next, n_images = [], []
        for b, (c, imgs) in enumerate(encoded):
            n = len(c["ids"])
            cols["ids"][b, :n] = torch.from_numpy(c["ids"])
            cols["kind"][b, :n] = torch.from_numpy(c["kind"])
            cols["doc"][b, :n] = 0
            cols["image"][b, :n] = torch.from_numpy(c["image"])
            cols["pos"][:, b, :n] = torch.from_numpy(c["pos"])
            if imgs:
                tok = self._latents_of(imgs)  # [n_images, G, P]
                at = np.flatnonzero(c["kind"] == KIND_CLEAN)
                cols["values"][b, at] = tok[c["image"][at], c["patch"][at]]
            last[b, n - 1] = True
            pos_next.append(int(c["pos"][0, n - 1]) + 1)
            n_images.append(len(imgs))
        out = self._forward(cols, cache, logits_at=last)
        return out.logits, pos_next, n_images

    # ------------------------------------------------------------------ one text token per row
    def _feed_tokens(self, tokens: torch.Tensor, active: torch.Tensor, pos: list[int], cache: KVCache):
        B = tokens.shape[0]
        cols = self._pad_cols(B, 1)
        for b in range(B):
            if active[b]:
                cols["ids"][b, 0] = tokens[b]
                cols["doc"][b, 0] = 0
                cols["pos"][:, b, 0] = pos[b]
        return self._forward(cols, cache, logits_at=active[:, None].to(self.device)).logits

    # ------------------------------------------------------------------ one image for a set of rows
    def _image_cols(self, rows: torch.Tensor, pos: list[int], image_ids: list[int], kind: int, uncond: bool):
        B = rows.shape[0]
        gh, gw = self.c.image_grid
        cols = self._pad_cols(B, self.G)
        r, cc = torch.div(torch.arange(self.G), gw, rounding_mode="floor"), torch.arange(self.G) % gw
        for b in range(B):
            if rows[b]:
                p = pos[b]
                cols["kind"][b] = kind
                cols["doc"][b] = 0
                cols["image"][b] = (UNCOND_IMAGE_ID + image_ids[b]) if uncond else image_ids[b]
                cols["pos"][0, b], cols["pos"][1, b], cols["pos"][2, b] = p, p + r, p + cc
                cols["uncond"][b] = uncond
        return cols

    @staticmethod
    def _cat(a: dict, b: dict) -> dict:
        return {k: torch.cat([a[k], b[k]], dim=-1 if k == "pos" else 1) for k in a}

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
        cond = self._image_cols(rows, pos, image_ids, KIND_NOISY, uncond=False)
        both = self._cat(cond, self._image_cols(rows, pos, image_ids, KIND_NOISY, uncond=True))
        lo, hi = opts.guidance_interval

        def g(x_in: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            # one time per step for every row; a step outside the guidance interval runs the conditional copy only
            guided = opts.guidance != 1.0 and lo <= float(t[0]) <= hi
            cols = both if guided else cond
            n = cols["ids"].shape[1]
            tok = patchify(x_in, p)  # [B, G, P]
            cols["values"] = torch.cat([tok, tok], dim=1) if guided else tok
            cols["t"] = t[:, None].expand(B, n).to(self.device)
            cols["s"] = s[:, None].expand(B, n).to(self.device)
            with cache.scratch():
                out = self._forward(cols, cache).image  # [B, n, P]
            g_w = cfg_combine(out[:, :G], out[:, G:], opts.guidance) if guided else out
            return unpatchify(g_w, p, c.image_grid, c.latent_channels)

        method = opts.method or ("pushforward" if c.image_objective == "imm" else "euler")
        noise = torch.randn((B, c.latent_channels, *lat), generator=generator).to(self.device) * self.sd
        times = time_grid(opts.steps, c.t_max, c.t_min, opts.time_grid)  # the range the model was trained on
        x0 = sample(g, noise, times, self.sd, method, generator)
        x0 = x0 * rows[:, None, None, None].to(x0.dtype).to(self.device)
        clean = self._image_cols(rows, pos, image_ids, KIND_CLEAN, uncond=False)
        clean["values"] = patchify(clean_input(x0, self.sd), p)  # at t = s = 0
        self._forward(clean, cache)  # kept: later tokens attend to the clean image
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
        c, B = self.c, len(prompts)
        gen = torch.Generator().manual_seed(opts.seed)
        encoded = [self.encode_prompt(p) for p in prompts]
        need = [self.row_tokens(len(e[0]["ids"]), opts) for e in encoded]
        for i, n in enumerate(need):  # fail before any work
            if n > c.max_seq_len:
                raise ContextOverflow(
                    f"prompt {i + 1} takes {len(encoded[i][0]['ids'])} tokens; with max_new_tokens={opts.max_new_tokens}"
                    f" and max_images={opts.max_images} it needs {n} > the model's context {c.max_seq_len}: shorten"
                    f" the prompt or lower max_new_tokens"
                )
        # one row's worst case, plus the unconditional copies that live in scratch; rows that draw images at
        # different times need more slots, and the cache grows for them
        cache = KVCache.for_model(self.model, B, capacity=max(need) + opts.max_images * self.G)
        logits, pos, n_img = self.prefill(encoded, cache)
        outs = [RowOutput() for _ in range(B)]
        drawn, n_text = [0] * B, [0] * B
        pending: list[list[int]] = [[] for _ in range(B)]  # text ids since the last image
        done = torch.zeros(B, dtype=torch.bool)
        step = 0
        while not bool(done.all()):
            tok = next_token(logits, opts.temperature, opts.top_k, opts.top_p, gen).cpu()
            if step == 0 and opts.image_first:
                tok[:] = c.boi_token_id
            step += 1
            active = ~done
            for b in torch.nonzero(active).squeeze(1).tolist():
                if tok[b] == c.boi_token_id and drawn[b] >= opts.max_images:
                    tok[b] = c.eos_token_id  # no image left to draw: end the row
                outs[b].tokens.append(int(tok[b]))
                if tok[b] not in (c.boi_token_id, c.eos_token_id):
                    pending[b].append(int(tok[b]))
                    n_text[b] += 1
            logits = self._scatter(logits, self._feed_tokens(tok, active, pos, cache), active)
            opening = active & (tok == c.boi_token_id)
            for b in torch.nonzero(active).squeeze(1).tolist():
                pos[b] += 1
                if tok[b] == c.eos_token_id or (n_text[b] >= opts.max_new_tokens and not opening[b]):
                    done[b] = True
            if bool(opening.any()):
                self._flush_text(outs, pending, opening)
                x0 = self.draw_images(opening, pos, list(n_img), cache, opts, gen)
                pixels = self.decode_pixels(x0)
                for b in torch.nonzero(opening).squeeze(1).tolist():
                    outs[b].segments.append(pixels[b])
                    drawn[b] += 1
                    n_img[b] += 1
                    pos[b] += max(c.image_grid)
                    done[b] = opts.stop_after_image or n_text[b] >= opts.max_new_tokens
                feed = opening & ~done  # <eoi>, then text continues
                if bool(feed.any()):
                    eoi = torch.full((B,), c.eoi_token_id)
                    logits = self._scatter(logits, self._feed_tokens(eoi, feed, pos, cache), feed)
                    for b in torch.nonzero(feed).squeeze(1).tolist():
                        pos[b] += 1
                        outs[b].tokens.append(c.eoi_token_id)
        self._flush_text(outs, pending, torch.ones(B, dtype=torch.bool))
        return outs

    @staticmethod
    def _scatter(old: torch.Tensor, new: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        if new is None:
            return old
        out = old.clone()
        out[rows.to(old.device)] = new
        return out

    def _flush_text(self, outs, text_since, rows) -> None:
        for b in range(len(outs)):
            if rows[b] and text_since[b]:
                outs[b].segments.append(self.tok.decode(text_since[b], skip_special_tokens=True).strip())
                text_since[b] = []
