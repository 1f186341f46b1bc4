"""Parallelism applied from outside the model: the ONLY module that imports accelerate and deepspeed.

`Engine` wraps one accelerate `Accelerator` (single process, DDP, or DeepSpeed ZeRO-1/2/3 chosen by the
`accelerate launch --config_file` in use) behind the few operations the trainer needs:

  backward(loss, last)    gradients of a globally normalised loss; DDP's all-reduce only on the last
                          micro-batch; DeepSpeed steps itself at that boundary. A non-finite loss is
                          back-propagated too (so DDP and ZeRO stay in step across ranks); its step is skipped.
  step(skip)              clip and update (or discard the accumulated gradients of a bad step)
  all_reduce / any_rank   counts and flags across ranks
  save_state/load_state   resumable state: model, optimizer, per-rank RNG (DeepSpeed writes its shards);
                          nothing is unpickled with weights_only=False (see `safe_torch_load`)
  param_shards            what this rank owns of each parameter (the shard under ZeRO-3) for the EMA
  full_state_dict         consolidated weights on rank 0 (gathered from ZeRO-3 shards)

On a CPU the process group uses gloo. The loss the trainer passes is already divided by global counts,
so `backward` multiplies back the 1/(accumulation steps) and 1/(world size) that accelerate, DDP and
DeepSpeed apply: the gradient is then exactly that of the whole global batch.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
from collections.abc import Iterator

import torch
from torch import nn

from mmgen.errors import CheckpointError
from mmgen.train.checkpoint import refused_pickle


def _launched_with_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def deepspeed_state_classes() -> list[type]:
    """The only non-tensor classes in a DeepSpeed ZeRO-1/2/3 checkpoint (deepspeed 0.19.8: the optimizer
    file's loss scaler, ZeRO stage and parameter-slice addresses): plain state, built without running code."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_torch_load(path: str, map_location=None, allow: list[type] | None = None):
    """torch.load(weights_only=True) with `allow` added to torch's allow-list for the duration of the call.

    The rule for DeepSpeed checkpoints: DeepSpeed's own loader calls torch.load(weights_only=False), which runs
    whatever a planted pickle asks for. So DeepSpeed's files are read here instead, with weights_only=True:
    tensors, containers and the classes of `deepspeed_state_classes()` only. A file that asks for any other
    global (a function to call, another class) is refused before anything runs, whether or not the folder has
    a manifest (the manifest, checkpoint.py, catches damage; it cannot stop someone who rewrites it)."""
    try:
        with torch.serialization.safe_globals(list(allow or [])):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise refused_pickle(path, e) from None


def refuse_universal_load(ds_config) -> None:
    """Refuse DeepSpeed's `checkpoint.load_universal`: with it, DeepSpeed's ZeRO optimizers read the universal
    checkpoint files with torch.load(weights_only=False) themselves (deepspeed/runtime/zero/stage3.py and
    stage_1_and_2.py `_load_universal_checkpoint`, deepspeed/checkpoint/), not through the `checkpoint_engine.load`
    that `Engine.load_state` replaces with `safe_torch_load`. `ds_config`: DeepSpeed's parsed `DeepSpeedConfig`."""
    if ds_config.load_universal_checkpoint:
        raise CheckpointError(
            'the DeepSpeed config sets "checkpoint": {"load_universal": true}: DeepSpeed then reads checkpoint '
            "files with torch.load(weights_only=False), which runs whatever code a planted file asks for, around "
            "this trainer's weights_only=True reader. Remove load_universal from the DeepSpeed config "
            "(configs/deepspeed/*.json or the accelerate config's deepspeed_config) to resume this trainer's "
            "checkpoints"
        )


class Engine:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        grad_accum: int,
        grad_clip: float,
        precision: str = "auto",
    ):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

        # On a CPU: DeepSpeed needs an explicit gloo process group (and no cpu=True, which drops DeepSpeed);
        # plain data parallelism needs cpu=True, without which every process trains alone.
        on_cpu = not torch.cuda.is_available()
        handlers: list = [DistributedDataParallelKwargs(find_unused_parameters=True)]
        if on_cpu and _launched_with_deepspeed():
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        bf16 = precision == "bf16" or (
            precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        )
        self.bf16 = bf16
        self.acc = Accelerator(
            gradient_accumulation_steps=grad_accum,
            mixed_precision="bf16" if bf16 else "no",
            kwargs_handlers=handlers,
            cpu=on_cpu and not _launched_with_deepspeed(),
        )
        if int(os.environ.get("WORLD_SIZE", "1")) != self.acc.num_processes:
            raise RuntimeError(
                f"launched {os.environ['WORLD_SIZE']} processes but accelerate sees {self.acc.num_processes}: "
                f"each would train alone; check the accelerate config (configs/accelerate/*.yaml)"
            )
        self.grad_accum, self.grad_clip = grad_accum, grad_clip
        self.deepspeed = self.acc.state.deepspeed_plugin is not None
        self.zero_stage = 0
        if self.deepspeed:
            ds = self.acc.state.deepspeed_plugin.deepspeed_config
            # our micro-batch is one packed batch; the batch-size numbers are bookkeeping for DeepSpeed
            ds["train_micro_batch_size_per_gpu"] = 1
            ds["gradient_accumulation_steps"] = grad_accum
            ds["train_batch_size"] = grad_accum * self.acc.num_processes
            ds["gradient_clipping"] = grad_clip  # DeepSpeed and accelerate would default it to 1.0
            self.zero_stage = int(ds.get("zero_optimization", {}).get("stage", 0))
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self._params = [p for p in self.unwrapped.parameters()]

    # ------------------------------------------------------------------------------------ properties
    @property
    def unwrapped(self) -> nn.Module:
        return self.acc.unwrap_model(self.model)

    @property
    def rank(self) -> int:
        return self.acc.process_index

    @property
    def world_size(self) -> int:
        return self.acc.num_processes

    @property
    def is_main(self) -> bool:
        return self.acc.is_main_process

    @property
    def device(self) -> torch.device:
        return self.acc.device

    def autocast(self):
        """bf16 autocast when the run is bf16. accelerate's own autocast is a no-op under DeepSpeed (DeepSpeed's
        bf16 mode casts the parameters to bf16 and keeps fp32 masters in the optimizer), which leaves fp32
        inputs (latents, times) meeting bf16 weights; torch.autocast casts them at each matmul instead."""
        if self.deepspeed and self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return self.acc.autocast()

    # ------------------------------------------------------------------------------------ collectives
    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.tolist()

    def any_rank(self, flag: bool) -> bool:
        return self.all_reduce([float(flag)], op="max")[0] > 0

    def barrier(self) -> None:
        self.acc.wait_for_everyone()

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        with self.acc.main_process_first():
            yield

    # ------------------------------------------------------------------------------------ optimisation
    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Accumulate d loss; `loss` is normalised by global counts (see module doc)."""
        scaled = loss * (self.grad_accum * self.world_size)
        self.acc.gradient_state._set_sync_gradients(last)
        ctx = contextlib.nullcontext() if (last or self.deepspeed) else self.acc.no_sync(self.model)
        with ctx:
            self.acc.backward(scaled)

    def step(self, skip: bool) -> float | None:
        """Apply the accumulated gradients (clipped), or drop them when `skip`. Returns the gradient norm."""
        if self.deepspeed:
            # DeepSpeed already stepped inside the last backward; a non-finite loss made its gradient norm
            # non-finite, which DeepSpeed treats as an overflow: it zeroes the gradients and skips the update.
            norm = self.acc.clip_grad_norm_(self._params, self.grad_clip)
            return None if norm is None else float(norm)
        norm = None
        if not skip:
            max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")  # inf: measure, do not clip
            norm = float(self.acc.clip_grad_norm_(self.model.parameters(), max_norm))
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def skipped_by_deepspeed(self) -> bool:
        """Whether DeepSpeed discarded the last update (non-finite gradients)."""
        opt = getattr(self.model, "optimizer", None)
        return bool(getattr(opt, "overflow", False))

    # ------------------------------------------------------------------------------------ state
    def param_shards(self) -> list[torch.Tensor]:
        """This rank's part of every parameter, in model order: the ZeRO-3 partition, else the whole tensor."""
        if self.zero_stage == 3:
            return [p.ds_tensor for p in self._params]
        return [p.data for p in self._params]

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Consolidated weights (on every rank, or rank 0 for ZeRO-3); None on other ranks."""
        if self.zero_stage == 3:
            sd = self.acc.get_state_dict(self.model)  # gathers the 16-bit (here: parameter-dtype) weights
            return {k: v.detach().cpu().clone() for k, v in sd.items()} if self.is_main else None
        return {k: v.detach().cpu().clone() for k, v in self.unwrapped.state_dict().items()}

    def save_state(self, folder: str) -> None:
        self.acc.save_state(folder, safe_serialization=True)

    def load_state(self, folder: str) -> None:
        if not self.deepspeed:
            self.acc.load_state(folder)  # safetensors + accelerate's torch.load(weights_only=True)
        else:
            # DeepSpeed reads its model and optimizer files through `checkpoint_engine.load`; this instance
            # attribute replaces it for the duration of the call (see safe_torch_load for the rule). A universal
            # checkpoint load would bypass it: refused (`_config` is what `load_universal_checkpoint()` reads).
            refuse_universal_load(self.model._config)
            reader, allow = self.model.checkpoint_engine, deepspeed_state_classes()
            reader.load = lambda path, map_location=None: safe_torch_load(path, map_location, allow)
            try:
                self.acc.load_state(folder)
            finally:
                del reader.load
        self._report_rng_state(folder)

    def _report_rng_state(self, folder: str) -> None:
        """accelerate swallows a failed RNG-state load (one log line at INFO, on rank 0 only): say it here.
        The training draws do not depend on these generators (they are seeded per step), so it is a warning."""
        from accelerate.utils import load

        path = os.path.join(folder, f"random_states_{self.rank}.pkl")
        try:
            restored = torch.equal(load(path)["torch_manual_seed"], torch.get_rng_state())
            problem = "" if restored else "accelerate did not restore it"
        except Exception as e:  # a missing or unreadable file: whatever torch.load raised
            problem = f"{type(e).__name__}: {e}"
        if problem:
            print(
                f"warning: rank {self.rank}: the random-number state in {path} was not restored ({problem}); "
                f"training goes on (its draws are seeded per step)",
                file=sys.stderr,
                flush=True,
            )

    def end(self) -> None:
        self.acc.end_training()
