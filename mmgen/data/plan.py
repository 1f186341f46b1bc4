"""The token plan: what the packer (`mmgen/data/packing.py`, which describes the layout) and the sampler
(`mmgen/sampling/interleaved.py`) hand the model, one typed column per concept.

Per micro-batch of B rows x L tokens (int tensors; -1 / IGNORE where not applicable):
    input_ids [B, L]    text ids (pad for image and padding tokens)
    kind      [B, L]    KIND_TEXT, KIND_CLEAN or KIND_NOISY
    doc       [B, L]    document id, unique in the micro-batch; -1 for padding (invisible to everything)
    image     [B, L]    image id of image tokens (an index into `images` for packed batches)
    pos       [3, B, L] rotary positions (t, h, w)
    patch     [B, L]    patch index (row-major in the latent grid) of image tokens
    labels    [B, L]    next-token target of the output at this position, IGNORE for none
and the values of one forward at the image positions, set by the objective or the sampler:
    image_tokens [B, L, P] c_in(t) x_t patches at image positions (anything elsewhere)
    t, s         [B, L]    flow-map times at image positions (0 for clean copies)
    uncond       [B, L]    bool: the token's image copy is unconditional (sees only itself)
`model_inputs` is the one mapping from a plan to the model's forward arguments; `MaskPlan.of`
(`mmgen/models/attention.py`) reads the attention mask's columns from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

KIND_TEXT, KIND_CLEAN, KIND_NOISY = 0, 1, 2  # per-token kind: text, clean image copy, noisy image copy
IGNORE = -100  # label of positions without a next-token target

MODEL_INPUTS = ("input_ids", "kind", "doc", "image", "pos", "image_tokens", "t", "s", "uncond")


@dataclass(kw_only=True)
class TokenPlan:
    # the columns (see the module docstring)
    input_ids: torch.Tensor
    kind: torch.Tensor
    doc: torch.Tensor
    image: torch.Tensor
    pos: torch.Tensor
    patch: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    # the values of one forward at the image positions
    image_tokens: torch.Tensor | None = None
    t: torch.Tensor | None = None
    s: torch.Tensor | None = None
    uncond: torch.Tensor | None = None
    # the images of a packed micro-batch
    images: torch.Tensor | None = None  # [N, 3, H, W] uint8 pixels, or [N, C, h, w] float cached latents
    image_loss: torch.Tensor | None = None  # [N] bool: the image has a noisy copy (is a generation target)
    image_meta: list[dict] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # the documents' keys, in packing order
    # the stream after this micro-batch (`Packer.batches`): the cursor of the first document it did not
    # take (None at the end of a finite stream), and the documents skipped since the previous micro-batch
    cursor: dict[str, int] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows B, tokens L)."""
        return tuple(self.input_ids.shape)  # type: ignore[return-value]

    def _map(self, fn) -> TokenPlan:
        """A copy with `fn` applied to every tensor field."""
        return replace(self, **{f.name: fn(v) for f in fields(self) if torch.is_tensor(v := getattr(self, f.name))})

    def to(self, device: torch.device | str) -> TokenPlan:
        return self._map(lambda v: v.to(device))

    def pin_memory(self) -> TokenPlan:
        """Called by a DataLoader with pin_memory=True."""
        return self._map(lambda v: v.pin_memory())

    def model_inputs(self) -> dict[str, Any]:
        """The model's forward keyword arguments (`MMGenModel.forward`), less text_positions and cache."""
        return {name: getattr(self, name) for name in MODEL_INPUTS}
