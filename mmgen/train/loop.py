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
from pathlib import Path

import torch
import yaml

from mmgen.config import ConfigError, RunConfig, dump_config, flatten, read_yaml, to_dict
from mmgen.data.plan import TokenPlan
from mmgen.data.skips import SkipReport
from mmgen.errors import CheckpointError
from mmgen.models.model import MMGenModel
from mmgen.objectives.multimodal import LossNorm, MultimodalLoss, count_units
from mmgen.train import build
from mmgen.train.checkpoint import choose_on_rank0, export_release, load_checkpoint, save_checkpoint
from mmgen.train.distributed import Engine
from mmgen.train.ema import EMA
from mmgen.train.log import MetricsLog, live_tensor_mb, memory_mb
from mmgen.train.schedule import learning_rate


class NonFiniteLoss(RuntimeError):
    pass


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms, biases and embeddings (1-D tensors and the token table)."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        (plain if p.ndim < 2 or name == "embed.weight" else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8)


def load_weights(model: MMGenModel, folder: str) -> None:
    """Start from a release folder's weights; every tensor must match in name and shape."""
    from safetensors.torch import load_file

    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise ConfigError(f"train.init_from: no model.safetensors in '{folder}' (give a release folder)")
    state = load_file(str(path))
    own = model.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if bad or set(state) - set(own):
        raise ConfigError(
            f"train.init_from: '{folder}' holds another architecture (first mismatch: "
            f"{(bad or sorted(set(state) - set(own)))[0]}); match model.* to it"
        )
    model.load_state_dict(state)


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
        model = MMGenModel(self.mconf)
        if cfg.train.init_from:
            load_weights(model, cfg.train.init_from)
        if cfg.train.grad_checkpointing:
            model.gradient_checkpointing = True
        if cfg.train.compile:
            model.compile_blocks()
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
        self.ema = EMA(e.param_shards(), cfg.train.ema_decay)
        self.step = 0
        self.bad_in_a_row = 0
        self.tokens_seen = 0
        cursor_state = None
        # the newest checkpoint that verifies, or has no manifest (files are read with weights_only=True anyway)
        chosen = choose_on_rank0(e, self.out / "checkpoints", resume)
        ckpt = chosen.path
        for note in chosen.notes if e.is_main else []:
            print(note, flush=True)
        if ckpt is not None:
            self._check_same_model(ckpt)
            state, ema_state, cursor_state = load_checkpoint(e, ckpt)
            self.ema.load_state_dict(ema_state)
            self.step, self.tokens_seen = state["step"], state["tokens_seen"]
            self.bad_in_a_row = state.get("bad_in_a_row", 0)
        self.data = build.data_pipe(cfg, self.spec, self.text_tok, e.rank, e.world_size, cursor_state)
        self.resumed_from = ckpt
        self.config_changes = self._config_changes() if ckpt is not None else []
        shards = e.param_shards()
        self.params_local = sum(t.numel() for t in shards)  # under ZeRO-3: this rank's share
        self.params_total = (
            sum(p.numel() for p in model.parameters())
            if e.zero_stage != 3
            else sum(p.ds_numel for p in e.unwrapped.parameters())
        )
        if e.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.config_changes:  # keep the config the earlier steps ran with
                (self.out / "config.yaml").replace(self.out / f"config-until-step-{self.step:07d}.yaml")
            dump_config(cfg, self.out / "config.yaml")
            (self.out / "model_config.json").write_text(json.dumps(self.mconf.architecture(), indent=1))
        self.log = MetricsLog(self.out / "metrics.jsonl", enabled=e.is_main)
        if replayed := self.log.drop_after(self.step):  # rows written after the checkpoint: replayed below
            print(
                f"metrics.jsonl: {replayed} row(s) after step {self.step} removed; the replayed steps write them again",
                flush=True,
            )
        self.skips = SkipReport()  # unreadable samples: the first few, then one line per thousand

    def _config_changes(self) -> list[str]:
        """'key: old -> new' for every setting that differs from the run's saved config.yaml (a resumed run
        may change its schedule or length on purpose; a forgotten output_dir should not pass unnoticed)."""
        saved = self.out / "config.yaml"
        if not saved.is_file():
            return []
        old, new = flatten(read_yaml(saved)), flatten(to_dict(self.cfg))
        return [f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]

    def _check_same_model(self, ckpt: Path) -> None:
        saved = self.out / "model_config.json"
        if saved.is_file():
            # keys a run saved before an option existed take the option's legacy value (MMGenConfig's default)
            old = json.loads(json.dumps(type(self.mconf)(**json.loads(saved.read_text())).architecture()))
            new = json.loads(json.dumps(self.mconf.architecture()))
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if diff:
                raise CheckpointError(
                    f"checkpoint {ckpt} belongs to another model (differs in {', '.join(diff)}): set those "
                    f"model options as the run had them (e.g. model.image_pos_embed=false for a run started before "
                    f"that option), use another train.output_dir, or --resume none"
                )

    # ------------------------------------------------------------------------------------ one step
    def _micro_batches(self, it) -> list[TokenPlan]:
        return [next(it) for _ in range(self.cfg.train.grad_accum)]

    def train_step(self, micro: list[TokenPlan]) -> dict[str, float]:
        e, cfg = self.engine, self.cfg
        gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + self.step * 7919 + e.rank)
        # every micro-batch's draws first (on the CPU batch): the IMM groups fix the loss normaliser
        noises = [self.loss_fn.draw(b, gen, self.step) for b in micro]
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
        sums = {"loss": 0.0, "text_loss": 0.0, "image_loss": 0.0}
        for i, (b, noise) in enumerate(zip(micro, noises)):
            x0 = build.clean_latents(b, self.image_tok, self.loss_fn.sigma_d, e.device)
            b = b.to(e.device)
            with e.autocast():
                loss, st = self.loss_fn(e.model, b, x0, noise, norm)
            bad |= e.any_rank(not math.isfinite(float(loss.detach())))
            e.backward(loss, last=i == len(micro) - 1)
            sums["loss"] += float(loss.detach())
            sums["text_loss"] += st["text_loss"] * st["text_tokens"]
            sums["image_loss"] += st["image_loss"] * st["image_units"]
        grad_norm = e.step(skip=bad)
        bad = bad or e.skipped_by_deepspeed()
        if not bad:
            self.ema.update(e.param_shards())
        tot = e.all_reduce([sums["loss"], sums["text_loss"], sums["image_loss"]])
        return {
            "loss": tot[0],
            "text_loss": tot[1] / max(g_text, 1),
            "image_loss": tot[2] / max(g_units, 1),
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
        t_window, tok_window, groups_window = time.perf_counter(), 0, 0.0
        e.model.train()
        while self.step < stop:
            try:
                micro = self._micro_batches(it)
            except Exception:  # bad data: close the bar first, so that the error is the last line printed
                bar.close()
                raise
            for b in micro:
                self.data.cursor.update(b)
                for key, reason in b.skipped if e.is_main else []:
                    if (line := self.skips.add(key, reason)) is not None:
                        bar.write(line)
            n_tok = e.all_reduce([float(sum(int((b.doc >= 0).sum()) for b in micro))])[0]
            last = self.train_step(micro)
            self.tokens_seen += int(n_tok)
            tok_window += n_tok
            groups_window += last["imm_groups"]
            self._guard_nonfinite(last)
            self.step += 1
            bar.update(1)
            if self.step % tc.log_every == 0 or self.step == stop:
                dt = time.perf_counter() - t_window
                # per-rank peak memory and live tensor memory, gathered in one reduction (zeros off this rank)
                mine = (memory_mb(e.device), live_tensor_mb(e.device))
                both = e.all_reduce([v if r == e.rank else 0.0 for v in mine for r in range(e.world_size)])
                mem, per_rank, live_per_rank = mine[0], both[: e.world_size], both[e.world_size :]
                last.update(
                    step=self.step,
                    tokens_per_s=tok_window / max(dt, 1e-9),
                    tokens_seen=self.tokens_seen,
                    imm_groups_per_s=groups_window / max(dt, 1e-9),
                    mem_mb=mem,
                    mem_mb_per_rank=per_rank,
                    tensor_mb_per_rank=live_per_rank,
                    data_skipped=self.data.cursor.skipped,
                    params_local=self.params_local,
                    params_total=self.params_total,
                )
                self.log.write(last)
                bar.set_postfix_str(
                    f"loss {last['loss']:.3f} text {last['text_loss']:.3f} img {last['image_loss']:.4f} "
                    f"{last['tokens_per_s']:.0f} tok/s {last['mem_mb']:.0f} MB"
                )
                t_window, tok_window, groups_window = time.perf_counter(), 0, 0.0
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
        e = self.engine
        state = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "bad_in_a_row": self.bad_in_a_row,
            "world_size": e.world_size,
            "time": time.time(),
        }
        return save_checkpoint(
            e,
            self.out / "checkpoints",
            self.step,
            state,
            self.ema.state_dict(),
            self.data.cursor.state_dict(),
            self.cfg.train.keep_checkpoints,
        )

    def export(self) -> Path | None:
        """Release weights (the EMA, consolidated) + tokenizers, loadable with MMGenModel.from_pretrained."""
        e = self.engine
        with self.ema.swapped(e.param_shards()):
            sd = e.full_state_dict()
        path = None
        if e.is_main:
            run_yaml = yaml.safe_dump(to_dict(self.cfg), sort_keys=False)
            path = export_release(
                self.out / "release", MMGenModel, self.mconf, sd, self.text_tok, self.image_tok, run_yaml
            )
        e.barrier()
        return path

    @torch.no_grad()
    def sample_grid(self) -> Path | None:
        """PNG grid of the EMA model's images for the config's fixed prompts (all ranks run it: under ZeRO-3
        every forward gathers parameters collectively)."""
        from mmgen.sampling.grid import save_grid
        from mmgen.sampling.interleaved import InterleavedSampler, SamplingOptions

        e, sc = self.engine, self.cfg.sample
        model = e.unwrapped
        model.eval()
        opts = SamplingOptions(
            steps=sc.steps, guidance=sc.guidance, seed=sc.seed, image_first=True, stop_after_image=True, max_images=1
        )
        with self.ema.swapped(e.param_shards()), e.autocast():
            sampler = InterleavedSampler(model, self.text_tok, self.image_tok)
            rows = sampler.run([[p] for p in sc.prompts for _ in range(4)], opts)
        model.train()
        path = None
        if e.is_main:
            images = [r.segments[-1] for r in rows]
            path = save_grid(
                images, self.out / "samples" / f"step-{self.step:07d}.png", ncol=4, labels=[p for p in sc.prompts]
            )
        return path
