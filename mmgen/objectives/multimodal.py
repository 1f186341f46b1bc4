"""The joint objective on a packed interleaved batch: next-token text + IMM (or flow matching) images.

Every image with a noisy copy is a generation target. For IMM the targets of a micro-batch are split into
groups of M particles (`groups.py`: consecutive targets, or targets of one prompt) that share (s, r, t); y_t
comes from the forward with gradient, y_r from a second forward of the same weights without gradient in which
only the noisy copies change (x_r at time r). Condition dropout makes a target's noisy copy unconditional (the mask
isolates it), which trains the unconditional branch of classifier-free guidance.

Normalisation is by global counts: text loss = sum of token cross-entropies / (text targets in the whole
optimizer step, over micro-batches and ranks); image loss = sum of group losses (IMM) or per-image losses
(FM) / (global groups or images). The trainer passes those counts (`LossNorm`), so gradient accumulation
and data parallelism give exactly the gradient of one large batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from mmgen.config import ObjectiveConfig
from mmgen.data.plan import IGNORE, KIND_CLEAN, KIND_NOISY, KIND_TEXT, TokenPlan
from mmgen.flowmap import (
    clean_input,
    ddim,
    flow_map,
    image_config,
    interpolate,
    network_input,
    velocity_target,
)
from mmgen.models.patches import from_dense, patchify, per_token, to_dense, unpatchify
from mmgen.objectives import flow_matching as fm
from mmgen.objectives import imm
from mmgen.objectives.groups import plan_groups
from mmgen.objectives.ntp import ntp_loss_sum, text_targets


@dataclass
class LossNorm:
    """Global denominators of one optimizer step."""

    text_tokens: float
    image_units: float


def count_units(batch: TokenPlan, noise: Noise, cfg: ObjectiveConfig) -> tuple[int, int]:
    """(text targets, image loss units: IMM groups or flow-matching images) of a drawn micro-batch, known
    before any forward, so the trainer can reduce the global counts first."""
    n_text = int((batch.labels != IGNORE).sum())
    return n_text, len(noise.sizes) if cfg.image == "imm" else len(noise.t)


@dataclass
class Noise:
    """The random draws of one micro-batch, per slot: slot j holds target `order[j]`, groups are consecutive
    slots (see `mmgen/objectives/groups.py`).

    Drawn group by group and image by image from one generator, so splitting a batch into micro-batches
    (with group boundaries aligned) consumes the generator exactly like the whole batch: accumulation and
    resumption are exact. With imm.group_by = prompt the groups depend on which targets share a micro-batch,
    so there accumulation equals the same micro-batches, not one large batch; resumption stays exact."""

    order: torch.Tensor  # [n_targets] target index (in image_loss order) of each slot
    t: torch.Tensor  # [n_targets]
    s: torch.Tensor
    r: torch.Tensor  # IMM only (= s for flow matching)
    uncond: torch.Tensor  # bool [n_targets]: condition dropped
    eps: torch.Tensor  # [n_targets, C, h, w], already scaled by sigma_d
    sizes: list[int]  # IMM group sizes (empty for flow matching)
    boundary: list[bool]  # per IMM group: trained at s = t with the flow-matching loss (imm.boundary_fraction)


def draw_noise(
    cfg: ObjectiveConfig,
    order: list[int],
    sizes: list[int],
    latent_shape: tuple[int, ...],
    generator: torch.Generator,
    step: int = 0,
    dropped: torch.Tensor | None = None,
) -> Noise:
    """`dropped` [n_targets] (target order): condition dropout already decided (grouping by prompt needs it
    first); None draws it per image here."""
    imm_mode = cfg.image == "imm"
    boundary_fraction = 1.0 if step < cfg.imm.warm_start_steps else cfg.imm.boundary_fraction
    img = image_config(cfg)
    sd, p_drop = img.sigma_d, img.cond_dropout
    t, s, r, unc, eps, boundary = [], [], [], [], [], []
    for size in sizes:
        if imm_mode:
            tg, sg, rg = imm.sample_times(1, cfg.imm, generator)
            # no draw at fraction 0, so the paper's IMM keeps its exact random stream
            on_boundary = boundary_fraction > 0 and bool(torch.rand(1, generator=generator) < boundary_fraction)
            boundary.append(on_boundary)
            if on_boundary:
                sg = rg = tg
        else:
            tg = fm.sample_t(1, cfg.fm, generator)
            sg = rg = tg
        for _ in range(size):
            slot = len(t)
            t.append(tg)
            s.append(sg)
            r.append(rg)
            drop = torch.rand(1, generator=generator) < p_drop if dropped is None else dropped[order[slot]].reshape(1)
            unc.append(drop)
            eps.append(torch.randn((1, *latent_shape), generator=generator) * sd)
    if not sizes:
        z = torch.zeros(0)
        return Noise(z.long(), z, z, z, z.bool(), torch.zeros((0, *latent_shape)), [], [])
    return Noise(
        torch.tensor(order),
        torch.cat(t),
        torch.cat(s),
        torch.cat(r),
        torch.cat(unc),
        torch.cat(eps),
        sizes if imm_mode else [],
        boundary,
    )


@dataclass
class _Prepared:
    """One micro-batch's image inputs for the forward with gradient (and, for IMM, the target forward)."""

    targets: torch.Tensor  # [n] image index of each slot
    clean: torch.Tensor  # [N, G, P] c_in(0) x0 patches of every image (the clean copies)
    noisy: torch.Tensor  # [N, G, P] c_in(t) x_t patches (rows of target images only)
    t: torch.Tensor  # [N] time of each image's noisy copy (0 for non-targets)
    s: torch.Tensor  # [N]
    uncond: torch.Tensor  # [B, L] bool: the token's image copy has its condition dropped (one tensor for both
    # forwards: the model reuses a batch's attention mask while it is passed the same column tensors)
    x: torch.Tensor  # [n, C, h, w] clean latents of the targets
    x_t: torch.Tensor  # [n, C, h, w]
    eps: torch.Tensor  # [n, C, h, w]


class MultimodalLoss:
    def __init__(self, cfg: ObjectiveConfig, patch_size: int, grid: tuple[int, int] | list[int], latent_channels: int):
        self.cfg = cfg
        self.p = patch_size
        self.grid = tuple(grid)
        self.latent_channels = latent_channels
        self.sigma_d = image_config(cfg).sigma_d

    def draw(self, batch: TokenPlan, generator: torch.Generator, step: int = 0) -> Noise:
        """The random draws of a micro-batch at optimizer step `step` (the step matters during warm start)."""
        cfg, n_t = self.cfg, int(batch.image_loss.sum())
        dropped = None
        if cfg.image == "imm" and cfg.imm.group_by == "prompt":  # dropped targets form their own groups
            dropped = torch.rand(n_t, generator=generator) < cfg.imm.cond_dropout
        order, sizes = plan_groups(batch, cfg, dropped)
        h, w = self.grid[0] * self.p, self.grid[1] * self.p
        return draw_noise(cfg, order, sizes, (self.latent_channels, h, w), generator, step, dropped)

    def _prepare(self, batch: TokenPlan, x0: torch.Tensor, noise: Noise) -> _Prepared:
        sd, dev, N = self.sigma_d, x0.device, x0.shape[0]
        targets = batch.image_loss.nonzero().squeeze(1)[noise.order].to(dev)  # in slot order
        t_i = noise.t.to(dev)
        t, s = x0.new_zeros(N), x0.new_zeros(N)
        t[targets], s[targets] = t_i, noise.s.to(dev)
        uncond = torch.zeros(N, dtype=torch.bool, device=dev)
        uncond[targets] = noise.uncond.to(dev)
        x, eps = x0[targets], noise.eps.to(dev, x0.dtype)
        x_t = interpolate(x, eps, t_i)
        clean = patchify(clean_input(x0, sd), self.p)
        noisy = torch.zeros_like(clean)
        noisy[targets] = patchify(network_input(x_t, t_i, sd), self.p)
        uncond = per_token(uncond, batch.image, batch.kind != KIND_TEXT)
        return _Prepared(targets, clean, noisy, t, s, uncond, x, x_t, eps)

    @staticmethod
    def _inputs(
        batch: TokenPlan, prep: _Prepared, noisy: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """Model inputs in the dense [B, L] layout; `noisy`, `t` (and `s`) override the noisy copies' values/times."""
        kind, image, patch = batch.kind, batch.image, batch.patch
        is_noisy, is_clean = kind == KIND_NOISY, kind == KIND_CLEAN
        dense = to_dense(prep.clean, image, patch, is_clean) + to_dense(noisy, image, patch, is_noisy)
        s = prep.s if s is None else s
        t_tok, s_tok = per_token(t, image, is_noisy), per_token(s, image, is_noisy)
        return replace(batch, image_tokens=dense, t=t_tok, s=s_tok, uncond=prep.uncond).model_inputs()

    def _g(self, out_image: torch.Tensor, batch: TokenPlan, prep: _Prepared) -> torch.Tensor:
        """The image head's G at the targets' noisy copies, as latents [n, C, h, w]."""
        g = from_dense(out_image, batch.image, batch.patch, batch.kind == KIND_NOISY, *prep.clean.shape[:2])
        return unpatchify(g, self.p, self.grid, self.latent_channels)[prep.targets]

    def g_at(
        self,
        model,
        batch: TokenPlan,
        prep: _Prepared,
        x: torch.Tensor,
        t: torch.Tensor,
        s: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """G [n, C, h, w] of a forward in which every target's noisy copy is x [n, C, h, w] at time t [n], second
        time s [n] (None: the prepared s); the clean copies, the text and the mask are the batch's. No logits."""
        return self.g_at_each(model, batch, [prep], x, t, s)[0]

    def g_at_each(
        self,
        model,
        batch: TokenPlan,
        preps: list[_Prepared],
        x: torch.Tensor,
        t: torch.Tensor,
        s: torch.Tensor | None = None,
        preconditioned: bool = False,
    ) -> list[torch.Tensor]:
        """`g_at` for several preparations of one batch that differ only in `uncond` (e.g. its conditional and
        unconditional copies) in ONE forward, their inputs side by side along the batch dimension: fewer, larger
        kernels. `preconditioned`: x is already the network input c_in(t) x_t (what a sampler's G receives)."""
        prep = preps[0]
        noisy = torch.zeros_like(prep.noisy)
        noisy[prep.targets] = patchify(x if preconditioned else network_input(x, t, self.sigma_d), self.p)
        t_img = prep.t.clone()
        t_img[prep.targets] = t
        s_img = None
        if s is not None:
            s_img = prep.s.clone()
            s_img[prep.targets] = s
        merged = self._inputs(batch, prep, noisy, t_img, s_img)
        if len(preps) > 1:  # pos is [3, B, L]
            copies = [{**merged, "uncond": p.uncond} for p in preps]
            merged = {k: torch.cat([c[k] for c in copies], dim=1 if k == "pos" else 0) for k in merged}
        out = model(**merged, text_positions=torch.zeros_like(merged["input_ids"], dtype=torch.bool))  # no logits
        B = batch.labels.shape[0]
        return [self._g(out.image[i * B : (i + 1) * B], batch, prep) for i, prep in enumerate(preps)]

    def __call__(
        self, model, batch: TokenPlan, x0: torch.Tensor, noise: Noise, norm: LossNorm | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """x0: clean latents of every image of the batch [N, C, h, w], normalised (std about sigma_d)."""
        cfg = self.cfg
        prep = self._prepare(batch, x0, noise)
        where_text, text_y = text_targets(batch.labels)
        out = model(**self._inputs(batch, prep, prep.noisy, prep.t), text_positions=where_text)
        text_sum = ntp_loss_sum(out.logits, text_y.to(x0.device))

        img_sum = x0.new_zeros(())
        n_t = prep.targets.numel()
        if n_t > 0:
            g = self._g(out.image, batch, prep)
            per_image_fm = (
                (g.float() - velocity_target(prep.x, prep.eps, self.sigma_d).float()).pow(2).flatten(1).mean(1)
            )
            img_sum = (
                self._imm_sum(model, batch, prep, g, noise, per_image_fm) if cfg.image == "imm" else per_image_fm.sum()
            )

        n_text_local, units_local = where_text.sum().item(), (len(noise.sizes) if cfg.image == "imm" else n_t)
        norm = norm or LossNorm(max(1, n_text_local), max(1, units_local))
        loss = cfg.text_weight * text_sum / max(norm.text_tokens, 1) + cfg.image_weight * img_sum / max(
            norm.image_units, 1
        )
        stats = {
            "text_loss": float(text_sum.detach()) / max(1, n_text_local),
            "image_loss": float(img_sum.detach()) / max(1, units_local),
            "text_tokens": float(n_text_local),
            "image_units": float(units_local),
        }
        return loss, stats

    def _imm_sum(
        self, model, batch: TokenPlan, prep: _Prepared, g_t: torch.Tensor, noise: Noise, per_image_fm: torch.Tensor
    ) -> torch.Tensor:
        """Sum over groups of lambda(t) MMD^2 (boundary groups: their weighted mean flow-matching loss)."""
        cfg, sd, dev = self.cfg.imm, self.sigma_d, g_t.device
        sizes, starts = noise.sizes, [sum(noise.sizes[:i]) for i in range(len(noise.sizes))]
        total = g_t.new_zeros(())
        weight = imm.boundary_weight(noise.t, cfg).to(dev)  # [n_targets], once per micro-batch
        for a, size, b in zip(starts, sizes, noise.boundary):
            if b:
                total = total + weight[a] * per_image_fm[a : a + size].mean()
        if all(noise.boundary):  # e.g. during warm start: no MMD group, no target forward
            return total
        t_i, s_i, r_i = noise.t.to(dev), noise.s.to(dev), noise.r.to(dev)
        y_t = flow_map(prep.x_t, t_i, s_i, g_t, sd)
        with torch.no_grad():  # theta-: the same weights, stop-gradient; only the noisy copies change
            if cfg.x_r == "model":  # the network's own jump t -> r (one more forward, its second time r)
                x_r = flow_map(prep.x_t, t_i, r_i, self.g_at(model, batch, prep, prep.x_t, t_i, r_i), sd)
            else:
                x_r = ddim(prep.x_t, prep.x, t_i, r_i)
            y_r = flow_map(x_r, r_i, s_i, self.g_at(model, batch, prep, x_r, r_i), sd)
        for size in sorted(set(sizes)):  # one batched kernel per group size (a few distinct sizes)
            first = [a for a, sz, b in zip(starts, sizes, noise.boundary) if sz == size and not b]
            if not first:
                continue
            first_t = torch.tensor(first, device=dev)
            idx = (first_t[:, None] + torch.arange(size, device=dev)).reshape(-1)
            G = len(first)
            per = imm.group_loss(
                y_t[idx].reshape(G, size, -1), y_r[idx].reshape(G, size, -1), t_i[first_t], s_i[first_t], cfg
            )
            total = total + per.sum()
        return total
