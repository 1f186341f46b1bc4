#!/usr/bin/env python
"""The main job on the embedded default (`make demo`), in a few minutes on a 2-core CPU:

  1. prompt the shipped release `releases/shapes` (seconds): text -> image at 1 and 4 steps, then
     interleaved prompts that put a generated image back into the context (edit it, caption it), all on one
     HTML page, outputs/demo/index.html;
  2. train a short run of the same recipe through `accelerate launch scripts/train.py` (a few hundred steps,
     progress bar, sample sheet) so the training path is seen working: runs/demo/;
  3. print where everything is.

Retraining the release itself is one command (releases/shapes/README.md):
  accelerate launch scripts/train.py --config configs/train/shapes_release.yaml
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO / "releases" / "shapes"
OUT = REPO / "outputs" / "demo"
RUN = REPO / "runs" / "demo"
DEMO_STEPS = 300  # the short run: long enough to see the loss fall and shapes appear on the sample sheet

TEXT_TO_IMAGE = [
    "a large red circle",
    "a small blue square",
    "a large green triangle above a small yellow circle",
    "a large white diamond",
    "a small purple circle left of a large white square",
    "a large yellow triangle",
    "a small yellow diamond below a large blue circle",
    "a large purple square right of a small green triangle",
]


def prompt_release() -> None:
    from mmgen.sampling.pipeline import MMGenPipeline, write_page

    pipe = MMGenPipeline.from_pretrained(RELEASE)
    prompts = TEXT_TO_IMAGE
    t0 = time.perf_counter()
    pages = []
    for steps in (1, 4):
        res = pipe(prompts, steps=steps, image_first=True, stop_after_image=True, max_new_tokens=0, seed=0)
        pages.append(write_page(res, OUT, f"text_to_image-N{steps}", f"text -> image, {steps} network evaluation(s)"))
    first = res[0].images[0]  # "a large red circle" at 4 steps goes back into the context
    edits = [
        ["a large red circle", first, "the same circle in blue"],
        ["a large red circle", first, "the same circle but small"],
    ]
    res = pipe(edits, image_first=True, stop_after_image=True, max_new_tokens=0, seed=0)
    res += pipe([[first, "this is"]], max_images=0, max_new_tokens=12, seed=0)  # captioning: text only
    pages.append(write_page(res, OUT, "interleaved", "interleaved: a generated image back in the prompt"))
    index = OUT / "index.html"
    links = "".join(f'<li><a href="{p.name}">{p.stem}</a></li>' for p in pages)
    frames = "".join(f'<iframe src="{p.name}" style="width:100%;height:420px;border:0"></iframe>' for p in pages)
    index.write_text(
        f"<!doctype html><meta charset='utf-8'><body style='background:#222;color:#ddd;font-family:sans-serif'>"
        f"<h1>mmgen demo: {RELEASE.relative_to(REPO)}</h1><ul>{links}</ul>{frames}</body>"
    )
    print(f"prompted {RELEASE.relative_to(REPO)} in {time.perf_counter() - t0:.1f}s -> {index.relative_to(REPO)}")
    for r in res:
        print("  ", " ".join(s if isinstance(s, str) else "<image>" for s in r.prompt), "->", r.text or "<image>")


def train_short_run() -> None:
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    cmd = [
        accelerate,
        "launch",
        "--config_file",
        "configs/accelerate/single.yaml",
        "scripts/train.py",
        "--config",
        "configs/train/shapes_release.yaml",
        f"train.output_dir={RUN.relative_to(REPO)}",
        f"train.steps={DEMO_STEPS}",
        f"train.sample_every={DEMO_STEPS}",
        f"train.ckpt_every={DEMO_STEPS}",
        f"train.warmup_steps={DEMO_STEPS // 10}",
        f"objective.imm.warm_start_steps={DEMO_STEPS // 2}",
    ]
    print("\n$ " + " ".join(cmd), flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run(cmd, cwd=REPO, check=True, env=env)


def main() -> None:
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if not (RELEASE / "model.safetensors").is_file():
        sys.exit(
            f"error: no release at {RELEASE}; it ships with the repository (git checkout -- releases/) or is "
            f"retrained with `accelerate launch scripts/train.py --config configs/train/shapes_release.yaml`"
        )
    prompt_release()
    t1 = time.perf_counter()
    train_short_run()
    t2 = time.perf_counter()
    print(f"\ndemo finished in {t2 - t0:.0f}s (prompting {t1 - t0:.0f}s, short training run {t2 - t1:.0f}s)")
    print(f"  generated pages : {(OUT / 'index.html').relative_to(REPO)} (open in a browser)")
    print(f"  short run       : {RUN.relative_to(REPO)}/ (metrics.jsonl, samples/, release/)")
    print(f"  shipped release : {RELEASE.relative_to(REPO)}/ (model card: README.md)")


if __name__ == "__main__":
    main()
