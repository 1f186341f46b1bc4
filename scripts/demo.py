#!/usr/bin/env python
"""The main job on the embedded default (`make demo`):

  1. `accelerate launch scripts/train.py`: the tiny default model on procedural shapes (the text and image
     tokenizers are trained first if their folders are missing; an interrupted run resumes);
  2. text -> image: "a large red circle" in 4 steps;
  3. interleaved: that image back in the prompt, "... the same circle in blue", and a caption of it.

Each stage reuses what an earlier run left. Outputs: runs/shapes_tiny/ (run, samples, release) and
outputs/demo/*.html (open them in a browser).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "runs" / "shapes_tiny"
OUT = REPO / "outputs" / "demo"


def run(*cmd: str) -> None:
    print("\n$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run(cmd, cwd=REPO, check=True, env=env)
    print(f"  ({time.perf_counter() - t0:.0f}s)", flush=True)


def main() -> None:
    py = sys.executable
    accelerate = str(Path(py).with_name("accelerate"))
    t0 = time.perf_counter()
    if not (RUN / "release" / "model.safetensors").is_file():
        run(accelerate, "launch", "--config_file", "configs/accelerate/single.yaml", "scripts/train.py")
    gen = [py, "scripts/generate.py", "--model", str(RUN / "release"), "--steps", "4"]
    run(*gen, "--out", str(OUT / "text_to_image"), "--image-first", "--max-new-tokens", "0",
        "--prompt", "a large red circle", "--prompt", "a small blue square above a large yellow circle")  # fmt: skip
    first = OUT / "text_to_image" / "result-000-generated-0.png"
    run(*gen, "--out", str(OUT / "interleaved"), "--max-new-tokens", "12",
        "--prompt", f"a large red circle <image:{first}> the same circle in blue",
        "--prompt", f"<image:{first}> this is")  # fmt: skip
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s: open {OUT}/*/result-*.html; "
          f"training samples in {RUN}/samples/")  # fmt: skip


if __name__ == "__main__":
    main()
