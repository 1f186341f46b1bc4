"""Reporting skipped (unreadable) samples at a bounded rate: a shard set full of damage cannot flood the log.

    report = SkipReport()
    if (line := report.add(key, reason)) is not None:
        print(line)

The first `first` skips are reported one by one, then one summary line per `every` further skips; `count`
holds the total (the trainer also writes its own count to metrics.jsonl as `data_skipped`).
"""

from __future__ import annotations


class SkipReport:
    def __init__(self, first: int = 5, every: int = 1000):
        self.first, self.every = first, every
        self.count = 0

    def add(self, key: str, reason: str) -> str | None:
        """Count one skipped sample; the line to report now, or None."""
        self.count += 1
        if self.count < self.first:
            return f"skipping unreadable sample {key}: {reason}"
        if self.count == self.first:
            return (
                f"skipping unreadable sample {key}: {reason} (from now on one line per {self.every} skipped "
                f"samples; metrics.jsonl counts them as data_skipped)"
            )
        if (self.count - self.first) % self.every == 0:
            return f"{self.count} unreadable samples skipped so far (the latest: {key}: {reason})"
        return None
