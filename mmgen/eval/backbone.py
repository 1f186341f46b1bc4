"""Forward + backward throughput of backbone variants (MoT against dense, flex against SDPA attention) on one
packed batch of shapes documents, and the FLOPs that give its model FLOPs utilisation (MFU)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from mmgen.config import ModelConfig, ShapesConfig
from mmgen.data.packing import Packer, PackSpec
from mmgen.data.plan import KIND_NOISY, KIND_TEXT, TokenPlan
from mmgen.data.shapes import ShapesGenerator
from mmgen.data.shards import Item
from mmgen.eval.presets import bench_config, preset
from mmgen.eval.timing import train_steps
from mmgen.models.model import MMGenConfig, MMGenModel

VARIANTS = {  # backbone variants the benchmarks compare: ModelConfig overrides
    "mot-flex": {"experts": "mot", "attention": "flex"},
    "mot-sdpa": {"experts": "mot", "attention": "sdpa"},
    "dense-flex": {"experts": "dense", "attention": "flex"},
    "dense-sdpa": {"experts": "dense", "attention": "sdpa"},
}


def variants_for(names: list[str], device: torch.device) -> dict[str, dict]:
    """The overrides of the named `VARIANTS`; off CUDA the flex ones run SDPA under the same names (torch has no
    FlexAttention backward on a CPU)."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    cuda = torch.device(device).type == "cuda"
    return {n: {**VARIANTS[n], **({} if cuda else {"attention": "sdpa"})} for n in names}


def packed_batch(tok, cfg: MMGenConfig, rows: int, seq_len: int) -> TokenPlan:
    packer = Packer(tok, PackSpec.from_config(cfg, rows=rows, seq_len=seq_len))
    gen = ShapesGenerator(ShapesConfig(image_size=cfg.image_size))
    return next(packer.batches(Item(gen.document(i), 0, 0, i) for i in range(100000)))


def inputs(batch: TokenPlan, cfg: MMGenConfig, device) -> dict[str, torch.Tensor]:
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


def variant_models(tok, preset_name: str, seq_len: int, image_size: int, variants: dict[str, dict], device):
    """{name: model} of one preset (configs/model/<preset>.yaml), each with its ModelConfig overrides (e.g.
    experts, attention), the same initial weights where shapes allow, fp32 on `device`."""
    mcfg = preset(preset_name)
    models = {}
    for name, over in variants.items():
        cfg = bench_config(ModelConfig(**{**mcfg.__dict__, **over}), len(tok), seq_len, image_size)
        torch.manual_seed(0)
        models[name] = MMGenModel(cfg).to(device).train()
    return models


@dataclass(frozen=True)
class Sizes:
    """The batch and the timed steps of a backbone benchmark."""

    rows: int
    seq_len: int
    steps: int  # timed forward+backward steps per variant
    warmup: int  # untimed steps before them


@dataclass
class VariantTimes:
    """What `time_variants` measured, with what it measured on."""

    models: dict[str, MMGenModel]
    batch: TokenPlan  # the packed batch (CPU)
    x: dict  # the model inputs on the device
    tokens: int  # real (non-padding) tokens of the batch
    image_fraction: float  # of the real tokens
    seconds: dict[str, list[float]]  # per variant: one forward+backward per timed step
    peak_mb: dict[str, float | None]  # per variant, CUDA only


def time_variants(
    tok,
    preset_name: str,
    variants: dict[str, dict],
    sizes: Sizes,
    device: torch.device,
    amp: torch.dtype | None = None,
    compile_blocks: bool = False,
    image_size: int = 32,
) -> VariantTimes:
    """Forward+backward seconds of each variant of a preset on one packed batch of shapes documents, in turns.
    `compile_blocks`: what train.compile does (each variant compiles anew)."""
    models = variant_models(tok, preset_name, sizes.seq_len, image_size, variants, device)
    if compile_blocks:
        for m in models.values():
            m.compile_blocks()
    cfg = next(iter(models.values())).config
    batch = packed_batch(tok, cfg, sizes.rows, sizes.seq_len)
    x = inputs(batch, cfg, device)
    real = batch.doc >= 0
    n_tok = int(real.sum())
    image_fraction = float(((batch.kind != KIND_TEXT) & real).sum()) / n_tok
    seconds, peak_mb = train_steps(models, x, sizes.steps, sizes.warmup, device, amp)
    return VariantTimes(models, batch, x, n_tok, image_fraction, seconds, peak_mb)
