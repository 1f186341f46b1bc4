"""Distilling a teacher's guided few-step sampler into the flow map's 1-step jump (objective.distill).

IMM trains the jump f(x_T, T, 0) through moment matching only, and on a 256-number latent that signal is weak
(docs/results.md, "The 1-step map"); and guidance, which the few-step samplers need, does not carry over to one
step (a guided 1-step map overshoots). This term gives the jump a direct target: for every image target of a
micro-batch, from the same x_T,

    x_teacher = the teacher's sampler over `steps` steps, guidance w on G:  G_w = G_u + w (G_c - G_u)
    loss      = || f_theta(x_T, T, 0) - x_teacher ||^2   (mean over the latent, summed over targets)

The teacher is frozen (a release: typically the IMM model the run starts from, so the run distils its own
guided 4-step sampler). A target whose condition is dropped (condition dropout) gets the teacher's unconditional
endpoint, so the student's unconditional branch stays what guidance needs at N >= 2. The student is the same
network in the same packed batch: the forward reads the caption through the batch's attention mask exactly as
the image objective's does; only the noisy copies and their times change.

x_T is the interpolant at T (0.6 % of the clean latent at the IMM default T = 0.994), the same input the image
objective trains the jump from T on; the samplers start from pure noise at T, the approximation IMM itself makes.
The teacher is a full, unsharded copy on every rank (under ZeRO-3 too): meant for models that fit one device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from mmgen.config import ConfigError
from mmgen.config.schema import DistillConfig
from mmgen.data.plan import KIND_TEXT, TokenPlan
from mmgen.flowmap import flow_map
from mmgen.models.model import MMGenConfig, MMGenModel
from mmgen.models.patches import per_token
from mmgen.objectives.multimodal import MultimodalLoss, Noise, _Prepared
from mmgen.sampling.flow_map import cfg_combine, time_grid


class JumpDistillation:
    """The term's draws, the teacher's sampler and the student's jump; `__call__` gives a micro-batch's sum."""

    def __init__(
        self,
        cfg: DistillConfig,
        loss_fn: MultimodalLoss,
        teacher: MMGenModel,
        t_range: tuple[float, float],
        teacher_sha256: str = "",
    ):
        self.cfg = cfg
        self.teacher_sha256 = teacher_sha256  # of the teacher's model.safetensors (empty: not from a release file)
        self.fn = loss_fn
        self.teacher = teacher.eval().requires_grad_(False)
        self.two_time = teacher.config.image_objective == "imm"  # a flow map (pushforward) or a velocity (Euler)
        # the student's trained range: the jump is T -> t_min, the teacher's sampler covers the same range
        self.t_min, self.t_max = t_range

    def draw(self, batch: TokenPlan, generator: torch.Generator, step: int) -> Noise:
        """The micro-batch's noise for the jump: the image objective's draws (noise, condition dropout), with
        every target at t = T, s = r = t_min."""
        noise = self.fn.draw(batch, generator, step)
        noise.t, noise.s, noise.r = (torch.full_like(noise.t, v) for v in (self.t_max, self.t_min, self.t_min))
        return noise

    def _g(self, model: Callable, batch: TokenPlan, preps: list[_Prepared], x: torch.Tensor, t: float, s: float):
        """G of `model` [n, C, h, w] at every target's noisy copy x at time t, second time s (scalars), for each
        preparation in `preps`, in one forward."""
        t_, s_ = (torch.full_like(x[:, 0, 0, 0], v) for v in (t, s))
        return self.fn.g_at_each(model, batch, preps, x, t_, s_)

    @torch.no_grad()
    def teacher_endpoints(self, batch: TokenPlan, prep: _Prepared) -> torch.Tensor:
        """The teacher's sample [n, C, h, w] from each target's x_T down to t_min over cfg.steps uniform steps (the
        pipeline's default grid); G is combined in fp32, as the pipeline does."""
        w, n = self.cfg.guidance, prep.targets.numel()
        unguided = prep
        if w != 1.0:  # the guidance's second branch: every target's copy unconditional
            drop = torch.zeros(prep.t.shape[0], dtype=torch.bool, device=prep.t.device)
            drop[prep.targets] = True
            unguided = replace(prep, uncond=per_token(drop, batch.image, batch.kind != KIND_TEXT))
        x = prep.x_t
        times = time_grid(self.cfg.steps, self.t_max, self.t_min).tolist()
        for t, s in zip(times[:-1], times[1:]):
            s_in = s if self.two_time else t  # a one-time model is called at s = t (its Euler step)
            if w != 1.0:  # the conditional and unconditional branches side by side in one forward
                g_c, g_u = (g.float() for g in self._g(self.teacher, batch, [prep, unguided], x, t, s_in))
                g = cfg_combine(g_c, g_u, w)
            else:
                g = self._g(self.teacher, batch, [prep], x, t, s_in)[0].float()
            tt, ss = (torch.full((n,), v, device=x.device) for v in (t, s))
            x = flow_map(x, tt, ss, g, self.fn.sigma_d)
        return x

    def __call__(self, model: Callable, batch: TokenPlan, x0: torch.Tensor, noise: Noise) -> torch.Tensor:
        """Sum over the micro-batch's targets of the per-image mean squared error of the student's jump."""
        prep = self.fn._prepare(batch, x0, noise)
        if prep.targets.numel() == 0:
            return x0.new_zeros(())
        target = self.teacher_endpoints(batch, prep)
        (g,) = self._g(model, batch, [prep], prep.x_t, self.t_max, self.t_min)
        y = flow_map(prep.x_t, noise.t.to(x0.device), noise.s.to(x0.device), g, self.fn.sigma_d)
        return (y.float() - target.float()).pow(2).flatten(1).mean(1).sum()


def check_teacher(teacher: MMGenModel, tokenizers: tuple, student: MMGenConfig, run_tokenizers: tuple, where: str):
    """The teacher must read and write the student's tokens (same text vocabulary, same image tokenizer weights,
    same latent grid) and, if it is a flow map, cover the student's time range."""

    def value(config, key):
        v = getattr(config, key)
        return tuple(v) if isinstance(v, (list, tuple)) else v

    keys = ["vocab_size", "latent_channels", "patch_size", "image_grid", "sigma_d"]
    keys += ["t_min", "t_max"] if teacher.config.image_objective == "imm" else []
    diff = [
        f"{k} {value(teacher.config, k)} (this run: {value(student, k)})"
        for k in keys
        if value(teacher.config, k) != value(student, k)
    ]
    (text, image), (run_text, run_image) = tokenizers, run_tokenizers
    if text.get_vocab() != run_text.get_vocab():
        diff.append("another text tokenizer (the vocabularies differ)")
    theirs, ours = image.state_dict(), run_image.state_dict()
    if theirs.keys() != ours.keys() or any(not torch.equal(theirs[k].cpu(), ours[k].cpu()) for k in ours):
        diff.append("another image tokenizer (its weights differ)")
    if diff:
        raise ConfigError(
            f"objective.distill.teacher={where!r} was trained for other tokens: {', '.join(diff)}; use a teacher "
            f"release trained with this run's tokenizers, image size and time range"
        )
