"""Exponential moving average of the weights, kept in the same layout as the parameters it follows.

Under ZeRO-3 each rank holds a shard of every parameter, so the EMA is sharded the same way (it follows
`Engine.param_shards()`): no rank ever holds the whole EMA. To export or sample from it, `swapped` exchanges
the EMA into the parameters' storage for the duration of a `with` block (DeepSpeed gathers the swapped
shards like any other), then exchanges back.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from mmgen.errors import CheckpointError


class EMA:
    def __init__(self, sources: list[torch.Tensor], decay: float):
        self.decay = decay
        self.shadow = [s.detach().clone().float() for s in sources]
        self.updates = 0

    def current_decay(self) -> float:
        """Warm-up: early updates average over fewer steps (min(decay, (1 + n) / (10 + n)))."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, sources: list[torch.Tensor]) -> None:
        d = self.current_decay()
        torch._foreach_lerp_(self.shadow, [s.float() for s in sources], 1.0 - d)
        self.updates += 1

    @contextmanager
    @torch.no_grad()
    def swapped(self, sources: list[torch.Tensor]):
        """Inside the block the parameters hold the EMA weights."""
        saved = [s.detach().clone() for s in sources]
        for s, e in zip(sources, self.shadow):
            s.copy_(e.to(s.dtype))
        try:
            yield
        finally:
            for s, v in zip(sources, saved):
                s.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"shadow.{i}": t for i, t in enumerate(self.shadow)}
        out["updates"] = torch.tensor(self.updates)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        n = sum(1 for k in state if k.startswith("shadow."))
        if n != len(self.shadow):
            raise CheckpointError(
                f"EMA state has {n} tensors, the model has {len(self.shadow)}: a checkpoint of another "
                f"model (resume it with the model config it was written with, or --resume none)"
            )
        for i, t in enumerate(self.shadow):
            src = state[f"shadow.{i}"]
            if src.shape != t.shape:
                raise CheckpointError(
                    f"EMA tensor {i} has shape {tuple(src.shape)}, expected {tuple(t.shape)}: a "
                    f"checkpoint of another model"
                )
            t.copy_(src)
        self.updates = int(state["updates"])
