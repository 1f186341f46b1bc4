#!/usr/bin/env python
"""Learning curve of a shapes run while it trains: the EMA weights of every K-th checkpoint, judged on held-out
prompts (docs/results.md section 1).

    python scripts/eval_shapes_curve.py --run runs/shapes_release --out results/shapes_ablation/curve_imm.json

Polls the run's checkpoints/ once a minute (a run keeps only its newest checkpoints, so start this beside it),
evaluates each step that is a multiple of --every on --n seen prompts at guidance --guidance (IMM at N = 1
and 4, flow matching at N = 4 and 8), appends to --out and stops after --until.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from mmgen.cli import cli_main
from mmgen.config import read_yaml
from mmgen.eval.shapes import judge, prompt_set
from mmgen.models.model import MMGenConfig, MMGenModel
from mmgen.sampling.pipeline import MMGenPipeline
from mmgen.tokenizer.text import ensure_text_tokenizer
from mmgen.tokenizer_study.train import ensure_image_tokenizer
from mmgen.train.ema import EMA


def ema_pipeline(run: Path, checkpoint: Path, text, image, times: dict) -> MMGenPipeline:
    """The run's model with a checkpoint's EMA weights (ema_rank0: one tensor per parameter, in model order);
    `times`: the trained t_min / t_max (model_config.json holds only the architecture)."""
    model = MMGenModel(MMGenConfig(**json.loads((run / "model_config.json").read_text()), **times))
    params = [p.data for p in model.parameters()]
    ema = EMA(params, decay=0.0)
    ema.load_state_dict(load_file(checkpoint / "ema_rank0.safetensors"))  # checks count and shapes
    with torch.no_grad():
        torch._foreach_copy_(params, ema.shadow)
    return MMGenPipeline(model.eval(), text, image)


@cli_main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--every", type=int, default=1000)
    ap.add_argument("--until", type=int, default=0, help="last step (default: the run's train.steps)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--guidance", type=float, default=3.0)
    args = ap.parse_args()
    run, out = Path(args.run), Path(args.out)
    config = read_yaml(run / "config.yaml")
    until = args.until or int(config["train"]["steps"])
    text = ensure_text_tokenizer(config["text_tokenizer"])  # trained from its recipe if the folder is missing
    image = ensure_image_tokenizer(config["image_tokenizer"]).eval()
    holdout = list(config["data"]["shapes"].get("holdout") or [])
    objective = config["objective"][config["objective"]["image"]]
    times = {k: objective[k] for k in ("t_min", "t_max") if k in objective}
    prompts, _ = prompt_set(args.n, int(config["data"]["image_size"]), holdout, unseen=False)
    done = (
        json.loads(out.read_text())
        if out.exists()
        else {"run": str(run), "prompts": args.n, "guidance": args.guidance, "points": []}
    )
    seen = {p["step"] for p in done["points"]}
    while until not in seen:
        for ck in sorted((run / "checkpoints").glob("step-*")):
            step = int(ck.name.split("-")[1].split(".")[0])
            if (
                ck.suffix
                or not (ck / "manifest.json").exists()
                or (step % args.every and step != until)
                or step in seen
            ):
                continue
            try:
                pipe = ema_pipeline(run, ck, text, image, times)
            except OSError as e:  # deleted under us by the run's checkpoint rotation
                print(f"skipped {ck}: {e}")
                continue
            point = {"step": step}
            for n in (1, 4) if pipe.model.config.image_objective == "imm" else (4, 8):
                acc, _, _ = judge(pipe, prompts, steps=n, guidance=args.guidance)
                point[f"N{n}"] = {k: round(acc[k], 3) for k in ("correct", "color", "shape", "size", "relation")}
            done["points"].append(point)
            seen.add(step)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(done, indent=1))
            print(point, flush=True)
        if until not in seen:
            if (run / "release" / "model.safetensors").is_file() and not any(
                int(c.name.split("-")[1].split(".")[0]) >= until for c in (run / "checkpoints").glob("step-*")
            ):
                break  # the run ended without a checkpoint at `until`: nothing more will come
            time.sleep(60)


if __name__ == "__main__":
    main()
