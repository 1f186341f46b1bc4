"""The training loop: joint next-token + IMM (or flow matching) on packed interleaved documents.

    trainer = Trainer(cfg, resume="auto"); trainer.train()

One optimizer step = `train.grad_accum` micro-batches per rank. Their loss-unit counts (text targets, IMM
groups) are all-reduced before the first forward, so every micro-batch's loss is divided by the counts of
the whole global batch. Random draws come from a generator seeded by (seed, step, rank): a resumed run
replays exactly what an uninterrupted one would have drawn.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmgen.config import ConfigError, RunConfig, dump_config
from mmgen.data.plan import TokenPlan
from mmgen.data.skips import SkipReport
from mmgen.models.model import MMGenModel
from mmgen.objectives.multimodal import LossNorm, MultimodalLoss, count_units
from mmgen.train import build, run_files
from mmgen.train.checkpoint import choose_on_rank0, load_checkpoint
from mmgen.train.distributed import Engine
from mmgen.train.ema import EMA
from mmgen.train.log import MetricsLog, live_tensor_mb, memory_mb
from mmgen.train.run_files import load_weights
from mmgen.train.schedule import learning_rate


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class _Window:
    """What the steps since the last log line processed, for the per-second rates."""

    start: float = field(default_factory=time.perf_counter)
    tokens: float = 0
    groups: float = 0.0


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms, biases and embeddings (1-D tensors and the token table)."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        (plain if p.ndim < 2 or name == "embed.weight" else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8)


class Trainer:
    def __init__(self, cfg: RunConfig, resume: str = "auto"):
        self.cfg = cfg
        self.out = Path(cfg.train.output_dir)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(
                f"train.output_dir={cfg.train.output_dir!r} is an existing file, not a folder; set "
                f"train.output_dir to a new folder or to the run folder to resume"
            )
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.text_tok, self.image_tok = build.load_tokenizers(cfg)
        self.mconf = build.model_config(cfg, self.text_tok, self.image_tok)
        self.spec = build.pack_spec(cfg, self.mconf)
        model = self._build_model()
        self.engine = Engine(
            model,
            make_optimizer(model, cfg.train),
            grad_accum=cfg.train.grad_accum,
            grad_clip=cfg.train.grad_clip,
            precision=cfg.train.precision,
        )
        e = self.engine
        if e.device.type == "cpu" and model.attention_backend(e.device) == "flex":
            raise ConfigError(
                "model.attention=flex: torch has no FlexAttention backward on a CPU; train with "
                "model.attention=auto (sdpa on a CPU, flex on CUDA) or sdpa"
            )
        self.image_tok.to(e.device).eval().requires_grad_(False)
        self.loss_fn = MultimodalLoss(
            cfg.objective, self.mconf.patch_size, self.mconf.image_grid, self.mconf.latent_channels
        )
        self.distill = build.distillation(cfg, self.loss_fn, self.mconf, (self.text_tok, self.image_tok), e.device)
        self.ema = EMA(e.param_shards(), cfg.train.ema_decay)
        self.step = 0
        self.bad_in_a_row = 0
        self.tokens_seen = 0
        ckpt, cursor_state = self._resume(resume)
        self.data = build.data_pipe(cfg, self.spec, self.text_tok, e.rank, e.world_size, cursor_state)
        self.resumed_from = ckpt
        self.config_changes = run_files.config_changes(self) if ckpt is not None else []
        self.params_local = sum(t.numel() for t in e.param_shards())  # under ZeRO-3: this rank's share
        self.params_total = (
            sum(p.numel() for p in model.parameters())
            if e.zero_stage != 3
            else sum(p.ds_numel for p in e.unwrapped.parameters())
        )
        self._start_run_folder()
        self.skips = SkipReport()  # unreadable samples: the first few, then one line per thousand

    def _build_model(self) -> MMGenModel:
        tc = self.cfg.train
        model = MMGenModel(self.mconf)
        if tc.init_from:
            load_weights(model, tc.init_from)
        if tc.grad_checkpointing:
            model.gradient_checkpointing = True
        if tc.compile:
            model.compile_blocks()
        return model

    def _resume(self, resume: str) -> tuple[Path | None, dict | None]:
        """Restore step, counters and EMA from the newest checkpoint that verifies, or has no manifest (files are
        read with weights_only=True anyway); returns it (None: a fresh start) and the data cursor's state."""
        e = self.engine
        chosen = choose_on_rank0(e, self.out / "checkpoints", resume)
        for note in chosen.notes if e.is_main else []:
            print(note, flush=True)
        if chosen.path is None:
            return None, None
        run_files.check_same_model(self, chosen.path)
        state, ema_state, cursor_state = load_checkpoint(e, chosen.path)
        run_files.check_same_teacher(self, chosen.path, state)
        self.ema.load_state_dict(ema_state)
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.bad_in_a_row = state.get("bad_in_a_row", 0)
        return chosen.path, cursor_state

    def _start_run_folder(self) -> None:
        """config.yaml and model_config.json (rank 0), and the metrics log, cut back to the resumed step."""
        if self.engine.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.config_changes:  # keep the config the earlier steps ran with
                (self.out / "config.yaml").replace(self.out / f"config-until-step-{self.step:07d}.yaml")
            dump_config(self.cfg, self.out / "config.yaml")
            (self.out / "model_config.json").write_text(json.dumps(self.mconf.architecture(), indent=1))
        self.log = MetricsLog(self.out / "metrics.jsonl", enabled=self.engine.is_main)
        if replayed := self.log.drop_after(self.step):  # rows written after the checkpoint: replayed below
            print(
                f"metrics.jsonl: {replayed} row(s) after step {self.step} removed; the replayed steps write them again",
                flush=True,
            )

    # ------------------------------------------------------------------------------------ one step
    def _micro_batches(self, it) -> list[TokenPlan]:
        return [next(it) for _ in range(self.cfg.train.grad_accum)]

    def train_step(self, micro: list[TokenPlan]) -> dict[str, float]:
        e, cfg = self.engine, self.cfg
        gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + self.step * 7919 + e.rank)
        # every micro-batch's draws first (on the CPU batch): the IMM groups fix the loss normaliser
        noises = [self.loss_fn.draw(b, gen, self.step) for b in micro]
        jumps = [self.distill.draw(b, gen, self.step) for b in micro] if self.distill else [None] * len(micro)
        # text targets, loss units, image targets, IMM groups compared by MMD (boundary groups aside), global
        counts = [0.0, 0.0, 0.0, 0.0]
        for b, noise in zip(micro, noises):
            n_text, units = count_units(b, noise, cfg.objective)
            counts[0] += n_text
            counts[1] += units
            counts[2] += len(noise.t)
            counts[3] += sum(not on_boundary for on_boundary in noise.boundary)
        g_text, g_units, g_targets, g_groups = e.all_reduce(counts)
        norm = LossNorm(g_text, g_units)
        e.set_lr(learning_rate(self.step, cfg.train))
        bad = False
        sums = {"loss": 0.0, "text_loss": 0.0, "image_loss": 0.0, "distill_loss": 0.0}
        for i, (b, noise, jump) in enumerate(zip(micro, noises, jumps)):
            x0 = build.clean_latents(b, self.image_tok, self.loss_fn.sigma_d, e.device)
            b = b.to(e.device)
            with e.autocast():
                loss, st = self.loss_fn(e.model, b, x0, noise, norm)
                if jump is not None:  # objective.distill: normalised by the global number of targets
                    # through the unwrapped module: DDP allows one forward with gradient per backward (its second
                    # would mark the weights the jump does not use, the LM head, unused); autograd sums both
                    # forwards' gradients into each weight before DDP's hook reduces it, so one sync still
                    d_sum = self.distill(e.unwrapped, b, x0, jump)
                    loss = loss + cfg.objective.distill.weight * d_sum / max(g_targets, 1)
                    sums["distill_loss"] += float(d_sum.detach())
            bad |= e.any_rank(not math.isfinite(float(loss.detach())))
            e.backward(loss, last=i == len(micro) - 1)
            sums["loss"] += float(loss.detach())
            sums["text_loss"] += st["text_loss"] * st["text_tokens"]
            sums["image_loss"] += st["image_loss"] * st["image_units"]
        grad_norm = e.step(skip=bad)
        bad = bad or e.skipped_by_deepspeed()
        if not bad:
            self.ema.update(e.param_shards())
        tot = e.all_reduce([sums["loss"], sums["text_loss"], sums["image_loss"], sums["distill_loss"]])
        extra = {"distill_loss": tot[3] / max(g_targets, 1)} if self.distill else {}
        return {
            "loss": tot[0],
            "text_loss": tot[1] / max(g_text, 1),
            "image_loss": tot[2] / max(g_units, 1),
            **extra,
            "grad_norm": grad_norm if grad_norm is not None else float("nan"),
            "lr": learning_rate(self.step, cfg.train),
            "skipped": float(bad),
            "image_targets": g_targets,
            "imm_groups": g_groups,
        }

    # ------------------------------------------------------------------------------------ the loop
    def train(self, max_steps: int | None = None) -> dict[str, float]:
        """Train to cfg.train.steps (or stop after `max_steps` more steps, for tests); returns the last metrics."""
        from tqdm import tqdm

        e, tc = self.engine, self.cfg.train
        stop = tc.steps if max_steps is None else min(tc.steps, self.step + max_steps)
        it = iter(self.data)
        bar = tqdm(total=tc.steps, initial=self.step, disable=not e.is_main, dynamic_ncols=True, desc="train")
        last: dict[str, float] = {}
        window = _Window()
        e.model.train()
        while self.step < stop:
            try:
                micro = self._micro_batches(it)
            except Exception:  # bad data: close the bar first, so that the error is the last line printed
                bar.close()
                raise
            self._note_data(micro, bar)
            n_tok = e.all_reduce([float(sum(int((b.doc >= 0).sum()) for b in micro))])[0]
            last = self.train_step(micro)
            self.tokens_seen += int(n_tok)
            window.tokens += n_tok
            window.groups += last["imm_groups"]
            self._guard_nonfinite(last)
            self.step += 1
            bar.update(1)
            if self.step % tc.log_every == 0 or self.step == stop:
                self._log(last, window, bar)
                window = _Window()
            if tc.sample_every and self.step % tc.sample_every == 0 and self.step < tc.steps:
                self.sample_grid()
            if tc.ckpt_every and self.step % tc.ckpt_every == 0 and self.step < tc.steps:
                self.save()
        bar.close()
        if self.step >= tc.steps:
            self.save()
            self.sample_grid()
            self.export()
        elif not (tc.ckpt_every and self.step % tc.ckpt_every == 0):
            self.save()  # stopped early (max_steps): leave a checkpoint to resume from
        return last

    def _note_data(self, micro: list[TokenPlan], bar) -> None:
        """Advance the data cursor past the micro-batches; report the samples they skipped (rank 0)."""
        for b in micro:
            self.data.cursor.update(b)
            for key, reason in b.skipped if self.engine.is_main else []:
                if (line := self.skips.add(key, reason)) is not None:
                    bar.write(line)

    def _log(self, last: dict[str, float], window: _Window, bar) -> None:
        """Add the rates of the window and the memory of every rank to `last`; write it to metrics.jsonl."""
        e = self.engine
        dt = time.perf_counter() - window.start
        # per-rank peak memory and live tensor memory, gathered in one reduction (zeros off this rank)
        mine = (memory_mb(e.device), live_tensor_mb(e.device))
        both = e.all_reduce([v if r == e.rank else 0.0 for v in mine for r in range(e.world_size)])
        last.update(
            step=self.step,
            tokens_per_s=window.tokens / max(dt, 1e-9),
            tokens_seen=self.tokens_seen,
            imm_groups_per_s=window.groups / max(dt, 1e-9),
            mem_mb=mine[0],
            mem_mb_per_rank=both[: e.world_size],
            tensor_mb_per_rank=both[e.world_size :],
            data_skipped=self.data.cursor.skipped,
            params_local=self.params_local,
            params_total=self.params_total,
        )
        self.log.write(last)
        distill = f"distill {last['distill_loss']:.4f} " if "distill_loss" in last else ""
        bar.set_postfix_str(
            f"loss {last['loss']:.3f} text {last['text_loss']:.3f} img {last['image_loss']:.4f} {distill}"
            f"{last['tokens_per_s']:.0f} tok/s {last['mem_mb']:.0f} MB"
        )

    def _guard_nonfinite(self, metrics: dict[str, float]) -> None:
        if not metrics["skipped"]:
            self.bad_in_a_row = 0
            return
        self.bad_in_a_row += 1
        msg = f"step {self.step + 1}: non-finite loss or gradient, update skipped ({self.bad_in_a_row} in a row)"
        self.log.write({"step": self.step + 1, "event": "nonfinite_skip"})
        if self.engine.is_main:
            print(msg, flush=True)
        if self.bad_in_a_row >= self.cfg.train.max_nonfinite:
            raise NonFiniteLoss(
                f"{msg}; stopping after {self.cfg.train.max_nonfinite} consecutive failures. Lower train.lr, "
                f"enable train.grad_clip, or check the data; resume from the last checkpoint with --resume auto"
            )

    # ------------------------------------------------------------------------------------ outputs
    def save(self) -> Path:
        return run_files.save(self)

    def export(self) -> Path | None:
        return run_files.export(self)

    def sample_grid(self) -> Path | None:
        return run_files.sample_grid(self)
