"""The joint objective on a packed interleaved batch: next-token text + IMM (or flow matching) images.

Every image with a noisy copy is a generation target. For IMM the targets of a micro-batch are split into
groups of M particles (consecutive targets; M or M+1 per group) that share (s, r, t); y_t comes from the
forward with gradient, y_r from a second forward of the same weights without gradient in which only the
noisy copies change (x_r at time r). Condition dropout makes a target's noisy copy unconditional (the mask
isolates it), which trains the unconditional branch of classifier-free guidance.

Normalisation is by global counts: text loss = sum of token cross-entropies / (text targets in the whole
optimizer step, over micro-batches and ranks); image loss = sum of group losses (IMM) or per-image losses
(FM) / (global groups or images). The trainer passes those counts (`LossNorm`), so gradient accumulation
and data parallelism give exactly the gradient of one large batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mmgen.config import ObjectiveConfig
from mmgen.data.plan import IGNORE, KIND_CLEAN, KIND_NOISY, KIND_TEXT
from mmgen.models.patches import from_dense, patchify, per_token, to_dense, unpatchify
from mmgen.objectives import flow_matching as fm
from mmgen.objectives import imm
from mmgen.objectives.ntp import ntp_loss_sum, text_targets


@dataclass
class LossNorm:
    """Global denominators of one optimizer step."""

    text_tokens: float
    image_units: float


def imm_groups(n_targets: int, M: int) -> list[int]:
    """Group sizes for n targets: as many groups as fit M, the remainder spread (sizes M or M+1); a batch
    with fewer than M targets forms one smaller group."""
    if n_targets == 0:
        return []
    n_groups = max(1, n_targets // M)
    base, extra = divmod(n_targets, n_groups)
    return [base + (1 if i < extra else 0) for i in range(n_groups)]


def count_units(batch: dict[str, Any], cfg: ObjectiveConfig) -> tuple[int, int]:
    """(text targets, image loss units) of a micro-batch, known before any forward."""
    n_text = int((batch["labels"] != IGNORE).sum())
    n_targets = int(batch["image_loss"].sum())
    units = len(imm_groups(n_targets, cfg.imm.particles)) if cfg.image == "imm" else n_targets
    return n_text, units


@dataclass
class Noise:
    """The random draws of one micro-batch, per target image (in target order).

    Drawn group by group and image by image from one generator, so splitting a batch into micro-batches
    (with group boundaries aligned) consumes the generator exactly like the whole batch: accumulation and
    resumption are exact."""

    t: torch.Tensor  # [n_targets]
    s: torch.Tensor
    r: torch.Tensor  # IMM only (= s for flow matching)
    uncond: torch.Tensor  # bool [n_targets]: condition dropped
    eps: torch.Tensor  # [n_targets, C, h, w], already scaled by sigma_d
    sizes: list[int]  # IMM group sizes (empty for flow matching)
    boundary: list[bool]  # per IMM group: trained at s = t with the flow-matching loss (imm.boundary_fraction)


def draw_noise(cfg: ObjectiveConfig, n_targets: int, latent_shape: tuple[int, ...],
               generator: torch.Generator) -> Noise:  # fmt: skip
    imm_mode = cfg.image == "imm"
    sd = cfg.imm.sigma_d if imm_mode else cfg.fm.sigma_d
    p_drop = cfg.imm.cond_dropout if imm_mode else cfg.fm.cond_dropout
    sizes = imm_groups(n_targets, cfg.imm.particles) if imm_mode else [1] * n_targets
    t, s, r, unc, eps, boundary = [], [], [], [], [], []
    for size in sizes:
        if imm_mode:
            tg, sg, rg = imm.sample_times(1, cfg.imm, generator)
            if cfg.imm.boundary_fraction > 0:
                boundary.append(bool(torch.rand(1, generator=generator) < cfg.imm.boundary_fraction))
                if boundary[-1]:
                    sg = rg = tg
        else:
            tg = fm.sample_t(1, cfg.fm, generator)
            sg = rg = tg
        for _ in range(size):
            t.append(tg)
            s.append(sg)
            r.append(rg)
            unc.append(torch.rand(1, generator=generator) < p_drop)
            eps.append(torch.randn((1, *latent_shape), generator=generator) * sd)
    if not sizes:
        z = torch.zeros(0)
        return Noise(z, z, z, z.bool(), torch.zeros((0, *latent_shape)), [], [])
    if imm_mode and not boundary:
        boundary = [False] * len(sizes)
    return Noise(torch.cat(t), torch.cat(s), torch.cat(r), torch.cat(unc), torch.cat(eps), sizes if imm_mode else [],
                 boundary)


class MultimodalLoss:
    def __init__(self, cfg: ObjectiveConfig, patch_size: int, grid: tuple[int, int] | list[int], latent_channels: int):
        self.cfg = cfg
        self.p = patch_size
        self.grid = tuple(grid)
        self.latent_channels = latent_channels
        self.sigma_d = cfg.imm.sigma_d if cfg.image == "imm" else cfg.fm.sigma_d

    def _inputs(self, batch, tokens_clean, noisy_vals, t_img, s_img, uncond_img):
        kind, image, patch = batch["kind"], batch["image"], batch["patch"]
        noisy, clean = kind == KIND_NOISY, kind == KIND_CLEAN
        dense = to_dense(tokens_clean, image, patch, clean) + to_dense(noisy_vals, image, patch, noisy)
        return {
            "input_ids": batch["input_ids"], "kind": kind, "doc": batch["doc"], "image": image, "pos": batch["pos"],
            "image_tokens": dense, "t": per_token(t_img, image, noisy), "s": per_token(s_img, image, noisy),
            "uncond": per_token(uncond_img, image, kind != KIND_TEXT),
        }  # fmt: skip

    def draw(self, batch: dict[str, Any], generator: torch.Generator) -> Noise:
        n_t = int(batch["image_loss"].sum())
        C = self.latent_channels
        h, w = self.grid[0] * self.p, self.grid[1] * self.p
        return draw_noise(self.cfg, n_t, (C, h, w), generator)

    def __call__(self, model, batch: dict[str, Any], x0: torch.Tensor, noise: Noise,
                 norm: LossNorm | None = None) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
        """x0: clean latents of every image of the batch [N, C, h, w], normalised (std about sigma_d)."""
        cfg, sd, dev = self.cfg, self.sigma_d, x0.device
        N = x0.shape[0]
        targets = batch["image_loss"].nonzero().squeeze(1).to(dev)
        n_t = targets.numel()
        tokens_clean = patchify(x0, self.p) / sd  # c_in(0) = 1 / sigma_d
        t_i, s_i, r_i = noise.t.to(dev), noise.s.to(dev), noise.r.to(dev)
        sizes = noise.sizes
        t_img, s_img = x0.new_zeros(N), x0.new_zeros(N)
        t_img[targets], s_img[targets] = t_i, s_i
        uncond_img = torch.zeros(N, dtype=torch.bool, device=dev)
        uncond_img[targets] = noise.uncond.to(dev)

        x = x0[targets]
        eps = noise.eps.to(dev, x0.dtype)
        x_t = imm.interpolate(x, eps, t_i)
        noisy_vals = x0.new_zeros(N, tokens_clean.shape[1], tokens_clean.shape[2])
        noisy_vals[targets] = patchify(imm.expand_as(imm.c_in(t_i, sd), x_t) * x_t, self.p)

        where_text, text_y = text_targets(batch["labels"])
        inputs = self._inputs(batch, tokens_clean, noisy_vals, t_img, s_img, uncond_img)
        out = model(**inputs, text_positions=where_text)
        text_sum = ntp_loss_sum(out.logits, text_y.to(dev))

        img_sum = x0.new_zeros(())
        if n_t > 0:
            noisy = batch["kind"] == KIND_NOISY
            g = self._latent(from_dense(out.image, batch["image"], batch["patch"], noisy, N, tokens_clean.shape[1]))
            g = g[targets]
            per_image_fm = (g.float() - fm.velocity_target(x, eps, sd).float()).pow(2).flatten(1).mean(1)
            if cfg.image == "imm":
                img_sum = self._imm_sum(model, batch, x, x_t, g, t_i, s_i, r_i, sizes, noise.boundary, tokens_clean,
                                        noisy_vals, t_img, s_img, uncond_img, targets, per_image_fm)  # fmt: skip
            else:
                img_sum = per_image_fm.sum()

        n_text_local, units_local = where_text.sum().item(), (len(sizes) if cfg.image == "imm" else n_t)
        norm = norm or LossNorm(max(1, n_text_local), max(1, units_local))
        loss = cfg.text_weight * text_sum / max(norm.text_tokens, 1) + cfg.image_weight * img_sum / max(norm.image_units, 1)
        stats = {
            "text_loss": float(text_sum.detach()) / max(1, n_text_local),
            "image_loss": float(img_sum.detach()) / max(1, units_local),
            "text_tokens": float(n_text_local),
            "image_units": float(units_local),
        }
        return loss, stats

    def _latent(self, tokens: torch.Tensor) -> torch.Tensor:
        return unpatchify(tokens, self.p, self.grid, self.latent_channels)

    def _imm_sum(self, model, batch, x, x_t, g_t, t_i, s_i, r_i, sizes, boundary, tokens_clean, noisy_vals,
                 t_img, s_img, uncond_img, targets, per_image_fm) -> torch.Tensor:  # fmt: skip
        """Sum over groups of lambda(t) MMD^2 (boundary groups: weighted mean flow-matching loss)."""
        cfg, sd = self.cfg.imm, self.sigma_d
        y_t = imm.flow_map(x_t, t_i, s_i, g_t, sd)
        x_r = imm.ddim(x_t, x, t_i, r_i)
        with torch.no_grad():  # theta-: the same weights, stop-gradient; only the noisy copies change
            noisy_r = noisy_vals.clone()
            noisy_r[targets] = patchify(imm.expand_as(imm.c_in(r_i, sd), x_r) * x_r, self.p)
            t_r = t_img.clone()
            t_r[targets] = r_i
            inputs_r = self._inputs(batch, tokens_clean, noisy_r, t_r, s_img, uncond_img)
            none = torch.zeros_like(batch["labels"], dtype=torch.bool)
            out_r = model(**inputs_r, text_positions=none)
            noisy = batch["kind"] == KIND_NOISY
            g_r = from_dense(out_r.image, batch["image"], batch["patch"], noisy, *tokens_clean.shape[:2])
            y_r = imm.flow_map(x_r, r_i, s_i, self._latent(g_r)[targets], sd)
        total = y_t.new_zeros(())
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        for a, size, b in zip(starts, sizes, boundary):
            if b:
                total = total + cfg.boundary_weight * per_image_fm[a : a + size].mean()
        for size in sorted(set(sizes)):  # one batched kernel per group size (sizes are M and M+1)
            first = [a for a, sz, b in zip(starts, sizes, boundary) if sz == size and not b]
            if not first:
                continue
            first = torch.tensor(first, device=y_t.device)
            idx = (first[:, None] + torch.arange(size, device=y_t.device)).reshape(-1)
            G = first.numel()
            per = imm.group_loss(y_t[idx].reshape(G, size, -1), y_r[idx].reshape(G, size, -1), t_i[first], s_i[first], cfg)
            total = total + per.sum()
        return total
