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


def _randn(shape, generator, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(device)


class MultimodalLoss:
    def __init__(self, cfg: ObjectiveConfig, patch_size: int, grid: tuple[int, int] | list[int]):
        self.cfg = cfg
        self.p = patch_size
        self.grid = tuple(grid)
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

    def __call__(self, model, batch: dict[str, Any], x0: torch.Tensor, generator: torch.Generator,
                 norm: LossNorm | None = None) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
        """x0: clean latents of every image of the batch [N, C, h, w], normalised (std about sigma_d)."""
        cfg, sd, dev = self.cfg, self.sigma_d, x0.device
        N = x0.shape[0]
        targets = batch["image_loss"].nonzero().squeeze(1).to(dev)
        n_t = targets.numel()
        tokens_clean = patchify(x0, self.p) / sd  # c_in(0) = 1 / sigma_d
        t_img, s_img = x0.new_zeros(N), x0.new_zeros(N)
        sizes: list[int] = []
        if cfg.image == "imm":
            sizes = imm_groups(n_t, cfg.imm.particles)
            tg, sg, rg = imm.sample_times(len(sizes), cfg.imm, generator, dev)
            rep = torch.tensor(sizes, device=dev)
            t_i, s_i, r_i = (v.repeat_interleave(rep) for v in (tg, sg, rg))
            p_drop = cfg.imm.cond_dropout
        else:
            t_i = fm.sample_t(n_t, cfg.fm, generator, dev)
            s_i = t_i
            p_drop = cfg.fm.cond_dropout
        t_img[targets], s_img[targets] = t_i, s_i
        uncond_img = torch.zeros(N, dtype=torch.bool, device=dev)
        uncond_img[targets] = (torch.rand(n_t, generator=generator) < p_drop).to(dev)

        x = x0[targets]
        eps = _randn(x.shape, generator, dev) * sd
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
            if cfg.image == "imm":
                img_sum = self._imm_sum(model, batch, inputs, x, x_t, g, t_i, s_i, r_i, sizes, tokens_clean,
                                        noisy_vals, t_img, s_img, uncond_img, targets)  # fmt: skip
            else:
                v = fm.velocity_target(x, eps, sd)
                img_sum = (g.float() - v.float()).pow(2).flatten(1).mean(1).sum()

        n_text_local, units_local = where_text.sum().item(), (len(sizes) if cfg.image == "imm" else n_t)
        norm = norm or LossNorm(max(1, n_text_local), max(1, units_local))
        loss = cfg.text_weight * text_sum / max(norm.text_tokens, 1) + cfg.image_weight * img_sum / max(norm.image_units, 1)
        stats = {
            "text_loss": float(text_sum) / max(1, n_text_local),
            "image_loss": float(img_sum) / max(1, units_local),
            "text_tokens": float(n_text_local),
            "image_units": float(units_local),
        }
        return loss, stats

    def _latent(self, tokens: torch.Tensor) -> torch.Tensor:
        return unpatchify(tokens, self.p, self.grid, tokens.shape[-1] // (self.p * self.p))

    def _imm_sum(self, model, batch, inputs, x, x_t, g_t, t_i, s_i, r_i, sizes, tokens_clean, noisy_vals,
                 t_img, s_img, uncond_img, targets) -> torch.Tensor:  # fmt: skip
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
        for size in sorted(set(sizes)):  # one batched kernel per group size (sizes are M and M+1)
            first = torch.tensor([a for a, sz in zip(starts, sizes) if sz == size], device=y_t.device)
            idx = (first[:, None] + torch.arange(size, device=y_t.device)).reshape(-1)
            G = first.numel()
            per = imm.group_loss(y_t[idx].view(G, size, -1), y_r[idx].view(G, size, -1), t_i[first], s_i[first], cfg)
            total = total + per.sum()
        return total
