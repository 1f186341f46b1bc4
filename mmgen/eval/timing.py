"""The timing harness of the benchmarks: the device's name, synchronised wall-clock timers, and runs in turns.

Every comparison runs its candidates in turns in one process (A, B, A, B, ...), so that drift and noise of the
machine hit all of them alike; medians summarise the turns.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Hashable

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU with the number of torch threads (what a CPU timing depends on)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# bf16 dense (no sparsity) peak TFLOPS by device-name substring, first match wins: the MFU denominator
BF16_PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0)]


def bf16_peak_tflops(device: torch.device) -> float | None:
    """The bf16 dense peak of a CUDA device by its name (None: a CPU, or a card not in `BF16_PEAK_TFLOPS`)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS if k in name), None)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a CPU has nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of `fn`, the device's queued work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def alternate(fns: dict[Hashable, Callable[[], object]], repeats: int, device: torch.device) -> dict[Hashable, float]:
    """Median seconds of each function, run in turns (after one warm-up round) so noise hits all alike."""
    times: dict[Hashable, list[float]] = {k: [] for k in fns}
    for i in range(repeats + 1):
        for k, fn in fns.items():
            dt = timed(fn, device)
            if i:
                times[k].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def train_steps(
    models: dict[str, torch.nn.Module], x: dict, steps: int, warmup: int, device: torch.device, amp=None
) -> tuple[dict[str, list[float]], dict[str, float | None]]:
    """Seconds per forward+backward of each model on inputs `x` (a squared-output loss), run in turns, under
    autocast to `amp` when given; on CUDA also each model's peak allocated MB during its steps."""
    times: dict[str, list[float]] = {k: [] for k in models}
    peak_mb: dict[str, float | None] = {k: None for k in models}
    cuda = device.type == "cuda"
    for i in range(warmup + steps):
        for name, model in models.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, amp or torch.float32, enabled=amp is not None):
                out = model(**x)
                loss = out.logits.float().pow(2).mean() + out.image.float().pow(2).mean()
            loss.backward()
            if cuda:
                torch.cuda.synchronize()
                peak_mb[name] = max(peak_mb[name] or 0.0, torch.cuda.max_memory_allocated(device) / 2**20)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    return times, peak_mb
