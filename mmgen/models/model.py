"""`MMGenModel`: the multimodal backbone as a `transformers` model (its config, `MMGenConfig`, lives in
mmgen/models/config.py and is re-exported here).

Inputs are a packed token plan (see `mmgen/data/packing.py`). Text tokens are embedded from their ids; image
tokens carry latent patches (already multiplied by c_in(t)) projected in by the image expert, plus the
embedding of their flow-map times (t, s). The model returns next-token logits for text positions and the
image expert's output G for image positions; which objective trains it (IMM, flow matching, next-token)
is not its business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from mmgen.data.plan import KIND_TEXT
from mmgen.models.attention import AttentionMask, Backend, MaskMemo, MaskPlan, resolve_backend
from mmgen.models.config import MMGenConfig  # re-exported: `from mmgen.models.model import MMGenConfig`
from mmgen.models.layers import RMSNorm, TimeEmbedding, rope_axis, rope_cos_sin, rope_inv_freq
from mmgen.models.mot import ImageTimes, MoTBlock, Routing


@dataclass
class MMGenOutput(ModelOutput):
    logits: torch.Tensor | None = None  # [n_selected_text, V] in row-major order of `text_positions`
    image: torch.Tensor | None = None  # [B, L, patch_dim] (meaningful at image positions only)


class MMGenModel(PreTrainedModel):
    config_class = MMGenConfig
    base_model_prefix = "mmgen"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MoTBlock"]

    def __init__(self, config: MMGenConfig):
        super().__init__(config)
        c = config
        D = c.width
        self.embed = nn.Embedding(c.vocab_size, D)
        self.image_in = nn.Linear(c.patch_dim, D)
        # [grid_h * grid_w, D]: row-major patch index -> embedding (None: rotary positions only)
        self.image_pos = nn.Parameter(torch.empty(c.image_tokens, D)) if c.image_pos_embed else None
        self.time = TimeEmbedding(D, c.time_freq_dim, time_input=c.time_input)
        self.layers = nn.ModuleList(
            MoTBlock(D, c.n_heads, c.head_dim, c.mlp_hidden, c.qk_norm, c.experts == "mot", c.image_adaln)
            for _ in range(c.depth)
        )
        self.text_norm = RMSNorm(D)
        self.image_norm = RMSNorm(D)
        self.image_final_mod = nn.Linear(D, 2 * D)  # adaLN shift/scale before the image head
        self.lm_head = nn.Linear(D, c.vocab_size, bias=False)
        self.image_out = nn.Linear(D, c.patch_dim)
        self.register_buffer("rope_inv_freq", rope_inv_freq(c.head_dim, c.rope_theta), persistent=False)
        self.register_buffer("rope_axis", rope_axis(c.head_dim), persistent=False)
        self.gradient_checkpointing = False
        self._masks = MaskMemo()
        self.post_init()
        if c.init_image_from_text and c.experts == "mot":
            for layer in self.layers:
                layer.experts[1].load_state_dict(layer.experts[0].state_dict())

    def _init_weights(self, module: nn.Module) -> None:
        """Called by transformers for every submodule, children first and this model last. `init.*` skips
        parameters that from_pretrained loaded."""
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, nn.RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, MMGenModel):
            # residual projections scaled down with depth; adaLN and the image head start at zero (DiT)
            for layer in module.layers:
                for e in layer.experts:
                    init.normal_(e.o.weight, std=std / math.sqrt(2 * self.config.depth))
                    init.normal_(e.mlp.w2.weight, std=std / math.sqrt(2 * self.config.depth))
                if layer.image_mod is not None:
                    init.zeros_(layer.image_mod.weight)
                    init.zeros_(layer.image_mod.bias)
            if module.image_pos is not None:
                init.normal_(module.image_pos, std=std)
            for lin in (module.image_final_mod, module.image_out):
                init.zeros_(lin.weight)
                init.zeros_(lin.bias)
            # non-persistent buffers are not in checkpoints: from_pretrained needs them computed here
            init.copy_(module.rope_inv_freq, rope_inv_freq(self.config.head_dim, self.config.rope_theta))
            init.copy_(module.rope_axis, rope_axis(self.config.head_dim))

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        kind: torch.Tensor,
        doc: torch.Tensor,
        image: torch.Tensor,
        pos: torch.Tensor,
        image_tokens: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        s: torch.Tensor | None = None,
        uncond: torch.Tensor | None = None,
        text_positions: torch.Tensor | None = None,
        cache=None,
        backend: Backend | None = None,
    ) -> MMGenOutput:
        """
        input_ids, kind, doc, image [B, L]; pos [3, B, L]: the token plan (see mmgen/data/packing.py).
        image_tokens [B, L, patch_dim]: c_in(t) x_t patches at image positions (anything elsewhere).
        t, s [B, L]: flow-map times at image positions (0 for clean copies); fp32.
        uncond [B, L] bool: the token's image copy is unconditional (sees only itself).
        text_positions [B, L] bool: where to compute logits (default: every text token; pass a bool tensor of
        zeros to skip the LM head).
        cache: a `KVCache` (mmgen/models/kv_cache.py): this forward's tokens are appended to it.
        backend: "sdpa" | "flex"; default `config.attention` resolved for the device (`attention_backend`).
        """
        L = input_ids.shape[1]
        is_image = kind != KIND_TEXT
        route = Routing.build(is_image, mot=self.config.experts == "mot")

        h, temb = self._embed(route, input_ids, pos, image_tokens, t, s)
        layer_kv = [None] * len(self.layers)
        if cache is None:  # a full sequence: one mask per batch (the memo: same column tensors), every layer
            mask = self._masks.get(doc, kind, image, uncond, L, backend or self.attention_backend(doc.device))
        else:  # prefill (empty cache) may use flex; decode steps are a few queries over the cache: SDPA
            prefill = cache.length == 0
            plan = MaskPlan(doc, kind, image, torch.zeros_like(is_image) if uncond is None else uncond)
            plan, layer_kv = cache.extend(plan, L)
            mask = AttentionMask(plan, L, backend or self.attention_backend(doc.device, cached=not prefill))
        rope = rope_cos_sin(pos, self.rope_inv_freq, self.rope_axis)  # each [B, L, Dh/2]

        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training:
                h = torch.utils.checkpoint.checkpoint(
                    layer, h, route, rope, mask, temb, layer_kv[i], use_reentrant=False
                )
            else:
                h = layer(h, route, rope, mask, temb, layer_kv[i])

        return self._heads(h, route, temb, is_image, text_positions)

    def _embed(
        self,
        route: Routing,
        input_ids: torch.Tensor,
        pos: torch.Tensor,
        image_tokens: torch.Tensor | None,
        t: torch.Tensor | None,
        s: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ImageTimes | None]:
        """The residual stream h [N, D] in stream order: text rows from ids, image rows from patches + their time
        embedding (+ their grid position's embedding); and the image rows' time embedding, SiLU'd, for the adaLN
        (None when there are no image rows)."""
        h = self.embed.weight.new_empty(route.batch * route.length, self.config.width)
        if route.n_text > 0:
            h[route.text_rows] = self.embed(route.group(input_ids)[route.text_rows])
        if route.n_image == 0:
            return h, None
        if image_tokens is None or t is None or s is None:
            raise ValueError("the plan has image tokens: pass image_tokens, t and s")
        rows = route.image_rows
        times = self._time_embedding(route.group(t)[rows].float(), route.group(s)[rows].float())  # emb [U, D]
        h[rows] = self.image_in(route.group(image_tokens)[rows].to(h.dtype)) + times.per_row(times.emb).to(h.dtype)
        if self.image_pos is not None:  # an image token sits at (p, p + row, p + col): see data/packing.py
            row_col = route.group((pos[1:] - pos[:1]).movedim(0, -1))[rows]  # [N_image, 2]
            h[rows] += self.image_pos[row_col[:, 0] * self.config.image_grid[1] + row_col[:, 1]].to(h.dtype)
        return h, times._replace(emb=nn.functional.silu(times.emb).to(h.dtype))

    def _heads(
        self,
        h: torch.Tensor,
        route: Routing,
        temb: ImageTimes | None,
        is_image: torch.Tensor,
        text_positions: torch.Tensor | None,
    ) -> MMGenOutput:
        """The image head (adaLN-modulated norm, then G) at image rows and the LM head at the selected text rows."""
        out = MMGenOutput()
        if route.n_image > 0:
            shift, scale = temb.per_row(self.image_final_mod(temb.emb)).chunk(2, dim=-1)
            g = self.image_out(self.image_norm(h[route.image_rows]) * (1 + scale) + shift)
            img = g.new_zeros(route.batch * route.length, g.shape[-1])
            img[route.image_rows] = g
            out.image = route.ungroup(img)
        if route.n_text > 0:
            sel = (~is_image) if text_positions is None else (text_positions & ~is_image)
            idx = sel.reshape(-1).nonzero().squeeze(1)  # sequence indices, row-major
            if idx.numel() > 0:
                out.logits = self.lm_head(self.text_norm(h[route.rows_of(idx)]))
        return out

    def attention_backend(self, device: torch.device | str | None = None, cached: bool = False) -> Backend:
        """`config.attention` on `device` (default: the weights'); `cached` forwards (decode steps over a KV
        cache) always use SDPA: a block mask per generated token would cost more than the few scores."""
        if cached:
            return "sdpa"
        return resolve_backend(getattr(self.config, "attention", "auto"), device or self.embed.weight.device)

    def compile_blocks(self, **compile_kwargs) -> None:
        """`torch.compile` every transformer block in place (`train.compile`). `nn.Module.compile` keeps the
        parameter names, so checkpoints and state dicts do not change. The embedding, routing and heads stay
        eager: their shapes change with each batch's text/image split, the blocks see that only as sizes
        (dynamic after the first recompile). Graph breaks: none in the steady state, checked by
        tests/test_gpu_path.py with `torch._dynamo.explain` (also: TORCH_LOGS=graph_breaks)."""
        for layer in self.layers:
            layer.compile(**compile_kwargs)

    def _time_embedding(self, t: torch.Tensor, s: torch.Tensor) -> ImageTimes:
        """The embedding (fp32, before the SiLU) of each distinct (t, s) pair among the rows (an image copy shares
        its times) and the pair of each row."""
        pairs = torch.stack([t, s], dim=-1)
        uniq, inv = torch.unique(pairs, dim=0, return_inverse=True)
        return ImageTimes(self.time(uniq[:, 0], uniq[:, 1]), inv)

    def num_parameters_by_expert(self) -> dict[str, int]:
        counts = {"text": 0, "image": 0, "shared": 0}
        for name, p in self.named_parameters():
            if ".experts.0." in name:
                counts["text"] += p.numel()
            elif ".experts.1." in name:
                counts["image"] += p.numel()
            else:
                counts["shared"] += p.numel()
        return counts


def _register_auto_classes() -> None:
    """Let AutoConfig / AutoModel (and AutoTokenizer, which reads config.json) recognise `mmgen` folders."""
    from transformers import AutoConfig, AutoModel

    try:
        AutoConfig.register("mmgen", MMGenConfig)
        AutoModel.register(MMGenConfig, MMGenModel)
    except ValueError:  # already registered
        pass


_register_auto_classes()
