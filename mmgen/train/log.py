"""Rank-0 metrics: one JSON line per logged step in the run folder."""

from __future__ import annotations

import gc
import json
import resource
import sys
from pathlib import Path

import torch


def memory_mb(device: torch.device) -> float:
    """Peak memory of this process: GPU allocations on an accelerator, resident set size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def live_tensor_mb(device: torch.device) -> float:
    """Tensor storage this process holds now (parameters, gradients, optimizer state, EMA, buffers): what
    ZeRO shards. On a GPU the allocator's count; on a CPU the sum over distinct storages of live tensors
    (the resident set size keeps freed pages, so it cannot show what sharding saves)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            # type(), not isinstance(): isinstance reads __class__, which some deprecated objects warn about
            if issubclass(type(obj), torch.Tensor) and obj.device.type == "cpu" and not obj.is_sparse:
                st = obj.untyped_storage()
                seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without a storage (meta, functional wrappers)
            continue
    return sum(seen.values()) / 2**20


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def drop_after(self, step: int) -> int:
        """Remove the rows of steps after `step` (a resumed run replays them and writes them again); returns
        how many were removed. The file is replaced atomically."""
        if not self.enabled or not self.path.is_file():
            return 0
        lines = self.path.read_text().splitlines(keepends=True)
        keep = [line for line in lines if not line.strip() or _step(line) <= step]
        if len(keep) < len(lines):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(keep))
            tmp.replace(self.path)
        return len(lines) - len(keep)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _step(line: str) -> float:
    """The step of a metrics row; a row that cannot be parsed (a line cut by a kill) counts as after every step."""
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return float("inf")
