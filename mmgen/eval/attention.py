"""The attention kernel alone, on the masks of a real packed batch: where FlexAttention's time goes.

A compiled base-preset step on an H100 spent 22 ms in FlexAttention for 6 % of the 128 x 128 tiles, where the
dense-mask SDPA spent ~60 ms on all of them (docs/gpu.md). The candidates here separate the causes:

- `sdpa-mask`: SDPA with the dense boolean mask (what `model.attention: sdpa` runs);
- `sdpa-causal`: SDPA with `is_causal` (flash kernel, every causal tile: the dense kernel's best case);
- `flex`: the model's block mask and `mask_mod` (six token columns read per score);
- `flex-packed`: the same rule from one int32 code per token (two reads per score; same mask, tested);
- `flex-docs`: causal within documents only (the cheapest mask with the same block sparsity, a lower bound);
- `flex-causal`: plain causal (the block sparsity of a single document).

Every candidate takes contiguous q, k, v [B, H, L, Dh], so a gap between `flex` and `flex-packed` is the
mask_mod's cost and a gap between `flex-docs` and the model's step is what the model adds around the kernel
(the fused gather prologue, layouts).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mmgen.data.plan import KIND_NOISY
from mmgen.models.attention import FLEX_BLOCK, MaskPlan, dense_mask

CANDIDATES = ("sdpa-mask", "sdpa-causal", "flex", "flex-packed", "flex-docs", "flex-causal")
_DOC_SHIFT, _COPY_SHIFT = 16, 2  # code = (doc + 1) << 16 | (copy + 1) << 2 | noisy << 1 | isolated


def packed_codes(plan: MaskPlan) -> torch.Tensor:
    """[B, L] int32: each token's document, image copy (image index and kind), noisy flag and isolation (an
    unconditional noisy copy) in one integer, so a mask_mod reads one value per query and one per key."""
    if plan.q_offset:
        raise ValueError("packed codes serve full-sequence masks (q_offset 0)")
    doc, kind, image = plan.doc.long(), plan.kind.long(), plan.image.long()
    if int(kind.min()) < 0 or int(kind.max()) > 3 or int(doc.min()) < -1:
        raise ValueError("packed codes need kinds in 0..3 and documents >= -1 (padding)")
    noisy = kind == KIND_NOISY
    copy = torch.where(image >= 0, image * 4 + kind, torch.full_like(image, -1))
    if int(doc.max()) + 1 >= 1 << 15 or int(copy.max()) + 1 >= 1 << (_DOC_SHIFT - _COPY_SHIFT):
        raise ValueError("too many documents or image copies in a row for the packed mask code")
    code = (doc + 1) << _DOC_SHIFT | (copy + 1) << _COPY_SHIFT | noisy.long() << 1 | (noisy & plan.uncond).long()
    return code.to(torch.int32)


def packed_mask_mod(code: torch.Tensor):
    """The model's mask rule (`MaskPlan.mask_mod`) over `packed_codes`."""

    def mask_mod(b, h, q_idx, kv_idx):
        cq, ck = code[b, q_idx], code[b, kv_idx]
        dq, dk = cq >> _DOC_SHIFT, ck >> _DOC_SHIFT  # document + 1 (0: padding)
        pq, pk = cq >> _COPY_SHIFT, ck >> _COPY_SHIFT  # (document + 1, copy + 1)
        same_doc = (dq == dk) & (dq > 0)
        same_copy = (pq == pk) & ((pq & ((1 << (_DOC_SHIFT - _COPY_SHIFT)) - 1)) > 0)
        context = (kv_idx <= q_idx) & ((ck & 2) == 0) & ((cq & 1) == 0)
        return (same_doc & (same_copy | context)) | ((dq == 0) & (kv_idx == q_idx))

    return mask_mod


def _docs_mask_mod(doc: torch.Tensor):
    def mask_mod(b, h, q_idx, kv_idx):
        return (doc[b, q_idx] == doc[b, kv_idx]) & (kv_idx <= q_idx)

    return mask_mod


def _causal(b, h, q_idx, kv_idx):
    return kv_idx <= q_idx


def candidate_fns(plan: MaskPlan, heads: int, head_dim: int, names, device, dtype, backward: bool):
    """{name: a function running one attention forward (and backward) on fixed random q, k, v}."""
    B, L = plan.doc.shape
    g = torch.Generator(device="cpu").manual_seed(0)
    qkv = [torch.randn(B, heads, L, head_dim, generator=g).to(device, dtype).requires_grad_(backward) for _ in range(3)]
    grad = torch.randn(B, heads, L, head_dim, generator=g).to(device, dtype)
    fns: dict[str, Callable[[], None]] = {}
    for name in names:
        if name not in CANDIDATES:
            raise ValueError(f"unknown attention candidate {name!r}; choose from {', '.join(CANDIDATES)}")
        fns[name] = _runner(name, plan, qkv, grad, device, backward)
    return fns


def _runner(name: str, plan: MaskPlan, qkv, grad, device, backward: bool) -> Callable[[], None]:
    B, L = plan.doc.shape
    if name.startswith("sdpa"):
        mask = dense_mask(plan, L) if name == "sdpa-mask" else None

        def attend(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)

    else:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        mod = {
            "flex": lambda b, h, q, kv: plan.mask_mod(b, h, q, kv),
            "flex-packed": packed_mask_mod(packed_codes(plan)),
            "flex-docs": _docs_mask_mod(plan.doc),
            "flex-causal": _causal,
        }[name]
        cuda = torch.device(device).type == "cuda"
        blocks = create_block_mask(mod, B, None, L, L, device=device, BLOCK_SIZE=FLEX_BLOCK, _compile=cuda)
        kernel = torch.compile(flex_attention, dynamic=False) if cuda else flex_attention

        def attend(q, k, v):
            return kernel(q, k, v, block_mask=blocks)

    def run() -> None:
        out = attend(*qkv)
        if backward:
            out.backward(grad)
            for t in qkv:
                t.grad = None

    return run
