"""What a caller may set for one interleaved generation (`mmgen/sampling/interleaved.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from mmgen.config.schema import GUIDANCE, STEPS, TIME_GRID, TIME_GRIDS, SampleConfig


@dataclass
class SamplingOptions:
    steps: int = STEPS  # network evaluations per image
    guidance: float = GUIDANCE  # classifier-free guidance weight w (1 = conditional only, 0 = unconditional)
    # guidance acts on steps that start at a time t in [lo, hi] (Kynkaanniemi et al. 2024, "guidance in a
    # limited interval"); other steps are conditional only. The default guides every step.
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    time_grid: str = TIME_GRID
    method: str | None = None  # pushforward (IMM) / euler (flow matching); default from the model
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_images: int = 1  # images a row may generate
    image_first: bool = False  # open an image right after the prompt instead of decoding text first
    stop_after_image: bool = False

    def validate(self) -> None:
        for name, allowed in SampleConfig.RANGES.items():  # steps, guidance, temperature, top_k, top_p, ...
            if (value := getattr(self, name)) not in allowed:
                raise ValueError(f"{name} {value} is out of range (allowed: {allowed})")
        if self.time_grid not in TIME_GRIDS:
            raise ValueError(f"time_grid must be {' or '.join(TIME_GRIDS)}, got {self.time_grid!r}")
        lo, hi = self.guidance_interval
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"guidance_interval must satisfy 0 <= lo < hi <= 1, got {self.guidance_interval}")
        if self.max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {self.max_images}")
        if self.method not in (None, "pushforward", "euler", "restart"):
            raise ValueError(f"unknown sampler {self.method!r}: pushforward, euler or restart")
