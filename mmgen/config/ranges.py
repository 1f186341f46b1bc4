"""The ranges of config numbers (`Range`, checked by `load_config` / `from_dict`) and the shared bounds."""

from __future__ import annotations

import math
from dataclasses import dataclass


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass(frozen=True)
class Range:
    """The allowed values of a number, or of each item of a list of numbers: lo <= x <= hi (`lo_open` /
    `hi_open` exclude the end; None = unbounded). NaN and infinity are never in a range.

    Each config class lists its ranges in `RANGES` (field -> Range); `load_config` / `from_dict` check them
    after every override is applied, and the error names the key, the value, this range and the file."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)

    def __str__(self) -> str:
        lo, hi = (f"{x:g}" if isinstance(x, float) else str(x) for x in (self.lo, self.hi))
        if self.lo is not None and self.hi is not None:
            return f"{'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        return f"{'<' if self.hi_open else '<='} {hi}"


AT_LEAST_0, AT_LEAST_1 = Range(0), Range(1)
POSITIVE = Range(0, lo_open=True)
UNIT = Range(0, 1)  # a probability or a fraction
UNIT_OPEN = Range(0, 1, hi_open=True)  # a decay or dropout rate (1 would freeze or drop everything)
LEARNING_RATE = Range(0, 1, lo_open=True)  # AdamW on normalised networks: above 1 diverges at once
# 2^16 tokens per packed row: the token plan, the rotary tables and the CPU path's dense (L x L) boolean
# attention mask (4 GiB per row at this length) all grow with it; longer rows would need sequence parallelism
MAX_SEQ_LEN = 65536
MAX_SAMPLER_STEPS = 1000  # network evaluations per image; IMM needs 1-8, flow matching saturates far below
