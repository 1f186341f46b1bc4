"""Distilling a teacher's guided few-step sampler into the flow map's 1-step jump (objective.distill).

IMM trains the jump f(x_T, T, 0) through moment matching only, and on a 256-number latent that signal is weak
(docs/results.md, "The 1-step map"); and guidance, which the few-step samplers need, does not carry over to one
step (a guided 1-step map overshoots). This term gives the jump a direct target: for every image target of a
micro-batch, from the same noise x_T,

    x_teacher = the teacher's sampler over `steps` steps, guidance w on G:  G_w = G_u + w (G_c - G_u)
    m         = || f_theta(x_T, T, 0) - x_teacher ||^2   (mean over the latent; space=pixel: over the pixels that
                                                         the frozen image decoder makes of both)
    loss      = sum over targets of m (loss=l2), or of sqrt(m + c^2) - c (loss=pseudo_huber)

The teacher is frozen (a release: typically the IMM model the run starts from, so the run distils its own
guided 4-step sampler). Its sampler is the pipeline's (`mmgen.sampling.flow_map.sample`: pushforward for a flow
map, Euler for flow matching, the same time grid), run in fp32 outside autocast as the release's sampler runs,
so the target is the image the teacher release draws for that caption and noise. A target whose condition is
dropped (condition dropout) gets the teacher's unconditional endpoint, so the student's unconditional branch
stays what guidance needs at N >= 2. The student is the same network in the same packed batch: the forward reads
the caption through the batch's attention mask exactly as the image objective's does; only the noisy copies and
their times change.

x_T is pure noise (eps, std sigma_d), as the samplers start at T, not the interpolant (1 - T) x0 + T eps.
The teacher is a full, unsharded copy on every rank (under ZeRO-3 too: `load_release` builds it outside
zero.Init): meant for models that fit one device.
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
from mmgen.sampling.flow_map import cfg_combine, sample, time_grid


class JumpDistillation:
    """The term's draws, the teacher's sampler and the student's jump; `__call__` gives a micro-batch's sum."""

    def __init__(
        self,
        cfg: DistillConfig,
        loss_fn: MultimodalLoss,
        teacher: MMGenModel,
        t_range: tuple[float, float],
        teacher_sha256: str = "",
        pixels: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.cfg = cfg
        self.teacher_sha256 = teacher_sha256  # of the teacher's model.safetensors (empty: not from a release file)
        self.fn = loss_fn
        self.teacher = teacher.eval().requires_grad_(False)
        self.method = "pushforward" if teacher.config.image_objective == "imm" else "euler"
        if cfg.space == "pixel" and pixels is None:
            raise ValueError("objective.distill.space=pixel needs the image decoder (`pixels`: latent -> pixels)")
        self.pixels = pixels  # model latent (std sigma_d) -> pixels, with gradient; used when cfg.space == "pixel"
        # the student's trained range: the jump is T -> t_min, the teacher's sampler covers the same range
        self.t_min, self.t_max = t_range

    def draw(self, batch: TokenPlan, generator: torch.Generator, step: int) -> Noise:
        """The micro-batch's noise for the jump: the image objective's draws (the noise eps, condition dropout);
        their times are not used (the jump is always T -> t_min)."""
        return self.fn.draw(batch, generator, step)

    @torch.no_grad()
    def teacher_endpoints(self, batch: TokenPlan, prep: _Prepared) -> torch.Tensor:
        """The teacher's sample [n, C, h, w] from each target's noise prep.eps at T down to t_min over cfg.steps
        steps of cfg.time_grid; G is combined in fp32, as the pipeline does."""
        w = self.cfg.guidance
        preps = [prep]
        if w != 1.0:  # the guidance's second branch: every target's copy unconditional, in the same forward
            drop = torch.zeros(prep.t.shape[0], dtype=torch.bool, device=prep.t.device)
            drop[prep.targets] = True
            preps.append(replace(prep, uncond=per_token(drop, batch.image, batch.kind != KIND_TEXT)))

        def g(x_in: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            out = [o.float() for o in self.fn.g_at_each(self.teacher, batch, preps, x_in, t, s, preconditioned=True)]
            return cfg_combine(out[0], out[1], w) if w != 1.0 else out[0]

        times = time_grid(self.cfg.steps, self.t_max, self.t_min, self.cfg.time_grid)
        with torch.autocast(prep.eps.device.type, enabled=False):  # the release's sampler runs without autocast
            return sample(g, prep.eps.float(), times, self.fn.sigma_d, self.method)

    def __call__(self, model: Callable, batch: TokenPlan, x0: torch.Tensor, noise: Noise) -> torch.Tensor:
        """Sum over the micro-batch's targets of the per-image mean squared error of the student's jump. The
        student's forward runs even without targets: under ZeRO-3 every rank's forward gathers weights together."""
        prep = self.fn._prepare(batch, x0, noise)
        t, s = (torch.full_like(prep.eps[:, 0, 0, 0], v) for v in (self.t_max, self.t_min))
        g = self.fn.g_at(model, batch, prep, prep.eps, t, s)
        if prep.targets.numel() == 0:
            return g.float().sum()  # 0, on the graph
        y = flow_map(prep.eps, t, s, g, self.fn.sigma_d)
        y, target = y.float(), self.teacher_endpoints(batch, prep)
        if self.cfg.space == "pixel":  # both decoded in fp32 outside autocast, as the sampler decodes
            with torch.autocast(y.device.type, enabled=False):
                y, target = self.pixels(y), self.pixels(target)
        m = (y - target).pow(2).flatten(1).mean(1)  # [n] per-image mean squared error
        if self.cfg.loss == "pseudo_huber":
            c = self.cfg.huber_c
            m = (m + c * c).sqrt() - c
        return m.sum()


def check_teacher(teacher: MMGenModel, tokenizers: tuple, student: MMGenConfig, run_tokenizers: tuple, where: str):
    """The teacher must read and write the student's tokens (same text vocabulary, same image tokenizer weights,
    same latent grid), cover the student's time range (a flow map: the same one) and context."""

    def value(config, key):
        v = getattr(config, key)
        return tuple(v) if isinstance(v, (list, tuple)) else v

    keys = ["vocab_size", "latent_channels", "patch_size", "image_grid", "sigma_d"]
    keys += ["t_min", "t_max"] if teacher.config.image_objective == "imm" else []
    tc = teacher.config
    diff = [f"{k} {value(tc, k)} (this run: {value(student, k)})" for k in keys if value(tc, k) != value(student, k)]
    if tc.image_objective != "imm" and not tc.t_min <= student.t_min < student.t_max <= tc.t_max:
        diff.append(f"time range [{tc.t_min}, {tc.t_max}] (this run samples [{student.t_min}, {student.t_max}])")
    if tc.max_seq_len < student.max_seq_len:
        diff.append(f"context {tc.max_seq_len} tokens (this run packs {student.max_seq_len})")
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
