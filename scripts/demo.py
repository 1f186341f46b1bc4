#!/usr/bin/env python
"""The main job on the embedded default (`make demo`): prepare the shapes data and tokenizers, train the tiny
default model, and generate from an interleaved prompt. Each stage reuses what an earlier run left."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(*cmd: str) -> None:
    print("\n$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    print(f"  ({time.perf_counter() - t0:.0f}s)", flush=True)


def main() -> None:
    py = sys.executable
    if not (REPO / "tokenizers/text/shapes/tokenizer_config.json").is_file():
        run(py, "scripts/train_tokenizer.py", "text", "--recipe", "tokenizers/text/shapes.yaml")
    if not (REPO / "data/shards/shapes-test/index.json").is_file():
        run(py, "scripts/prepare_data.py", "--source", "shapes", "--split", "test", "--limit", "1000",
            "--out", "data/shards/shapes-test")  # fmt: skip


if __name__ == "__main__":
    main()
