#!/usr/bin/env python
"""Publish a trained run as a release folder in the repository, with its model card.

    python scripts/publish_release.py --run runs/shapes_release --out releases/shapes \\
        --eval results/eval_shapes_release.json --wall "78 min on one core of a 2-core x86_64 VM" --bf16

Copies the run's exported release (EMA weights, both tokenizers, run_config.yaml), optionally stores the
weights in bf16 (half the size; `from_pretrained` loads them into fp32), checks that the copy loads and
samples the same images as the run's own release, and writes README.md: the training command, data, steps,
tokens, wall time, machine and the evaluation table from `scripts/eval_shapes.py`'s JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mmgen.cli import cli_main
from mmgen.config import read_yaml
from mmgen.errors import CheckpointError, MissingInput
from mmgen.sampling.pipeline import MMGenPipeline
from mmgen.sampling.release import GUIDANCE_BY_STEPS, SAMPLING_FILE, load_sampling_defaults


def _table(report: dict) -> str:
    """Markdown rows 'prompts | guidance | N | fully correct | colour | shape | size | relation' per model; with
    several noise seeds, each accuracy is the mean over the seeds and 'fully correct' lists each seed."""
    lines = []
    for path, entry in report["models"].items():
        means = entry.get("mean_over_seeds")
        seeds = f", mean over noise seeds {', '.join(map(str, means[0]['seeds']))}" if means else ""
        lines += [
            f"\n`{path}` ({entry['objective']}{seeds}):\n",
            "| prompts | guidance | N | fully correct | colour | shape | size | relation |"
            + ("" if means else " ms / image |"),
            "|---|---|---|---|---|---|---|---|" + ("" if means else "---|"),
        ]
        for r in means or entry["results"]:
            n = report["prompt_sets"][r["prompts"]]
            correct = f"**{r['correct']:.1%}**"
            if means:
                correct += f" ({' / '.join(f'{v:.1%}' for v in r['correct_per_seed'])})"
            lines.append(
                f"| {r['prompts']} ({n}) | {r['guidance']:g} | {r['steps']} | {correct} | "
                f"{r['color']:.1%} | {r['shape']:.1%} | {r['size']:.1%} | {r.get('relation', float('nan')):.1%} |"
                + ("" if means else f" {1000 * r['seconds_per_image']:.0f} |")
            )
    return "\n".join(lines)


def model_card(
    run: Path, folder: Path, out: Path, report: dict, wall: str, command: str, bf16: bool, defaults: dict
) -> str:
    """README.md of the release written to `folder` and published as `out`."""
    config = read_yaml(run / "config.yaml")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = metrics[-1]
    mc = json.loads((folder / "config.json").read_text())
    shapes = config["data"]["shapes"]
    holdout = shapes.get("holdout") or []
    size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20

    def named(path: str) -> str:
        # a stage trained from (or distilled from) the release it replaces names it as such: once published,
        # `out` holds this stage's weights, not the ones it started from
        same = Path(path).resolve() == out.resolve()
        return f"the previous release at `{path}` (the weights this release replaces)" if same else f"`{path}`"

    init = config["train"].get("init_from")
    stage = (
        f"\n- Continued training: initialised from the EMA weights of {named(init)}; the steps, tokens and wall time"
        " below are this stage's."
        if init
        else ""
    )
    distill = config["objective"].get("distill") or {}
    if distill.get("teacher") and distill.get("weight", 1.0) > 0:
        loss = distill.get("loss", "l2")
        loss += f" with c = {distill.get('huber_c', 0.03):g}" if loss == "pseudo_huber" else ""
        stage += (
            f"\n- 1-step distillation (`objective.distill`): beside the IMM objective, the jump f(x_T, T, 0) regresses"
            f" on the {distill.get('steps', 4)}-step samples at guidance {distill.get('guidance', 1.0):g} of a frozen"
            f" teacher, {named(distill['teacher'])}, from the same noise (weight {distill.get('weight', 1.0):g}, loss"
            f" {loss} in {distill.get('space', 'latent')} space)."
        )
    seeds = sorted({r.get("seed", 0) for e in report["models"].values() for r in e["results"]})
    per_seed = f" and noise seed ({', '.join(map(str, seeds))}; a rate is their mean)" if len(seeds) > 1 else ""
    return f"""# {out.name}: the mmgen default model

A {mc["depth"]}-layer Mixture-of-Transformers (width {mc["width"]}, {last["params_total"] / 1e6:.2f} M parameters,
text and image experts) trained on the procedural shapes stream: it writes captions as text tokens and draws
{mc["image_size"]} x {mc["image_size"]} images as {mc["latent_channels"]}-channel VAE latents
({mc["image_grid"][0]} x {mc["image_grid"][1]} image tokens), image objective **{mc["image_objective"]}**
(flow map's second time input: `{mc["time_input"]}`). Weights: the EMA, {"bf16" if bf16 else "fp32"} safetensors
({size_mb:.1f} MB for the whole folder).

```python
from mmgen.sampling.pipeline import MMGenPipeline
pipe = MMGenPipeline.from_pretrained("{out.as_posix()}")
images = pipe.text_to_image(["a large red circle"])  # sampling.json: {defaults}
```

## Training

- Command: `{command}`{stage}
- Data: `shapes`, split `train`, seed {shapes["seed"]}, {mc["image_size"]} px; layouts caption -> image
  {shapes["p_caption_image"]}, image -> caption {shapes["p_image_caption"]}, interleaved {shapes["p_interleaved"]}.
- Held-out colour-shape pairs (never drawn in training): {", ".join(holdout) or "none"}.
- Steps: {last["step"]} of {config["data"]["rows"]} x {config["data"]["seq_len"]} packed tokens
  ({last["tokens_seen"] / 1e6:.2f} M tokens), lr {config["train"]["lr"]} ({config["train"]["schedule"]}),
  EMA {config["train"]["ema_decay"]}, seed {config["train"]["seed"]}.
- Wall time and machine: {wall}.
- Final training loss: text {last["text_loss"]:.3f}, image {last["image_loss"]:.4f}.

## Evaluation

`python scripts/eval_shapes.py --model {out.as_posix()} ...` on held-out prompts (test split), one image
per prompt{per_seed}, judged by the analytic checker `mmgen/data/shapes_check.py` (its accuracy on the real images of
the same prompts: {report["checker_on_real_images"]["seen"]["correct"]:.1%}). *seen*: prompts whose
colour-shape pairs all occur in training; *unseen*: prompts with at least one held-out pair.
{_table(report)}
"""


@cli_main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="training run folder (with release/, config.yaml, metrics.jsonl)")
    ap.add_argument("--out", required=True, help="release folder to write, e.g. releases/shapes")
    ap.add_argument("--eval", required=True, help="scripts/eval_shapes.py JSON of this run's release (and baselines)")
    ap.add_argument("--wall", required=True, help="training wall time and machine, for the model card")
    ap.add_argument("--command", default="", help="the training command (default: from the run's config)")
    ap.add_argument("--bf16", action="store_true", help="store the weights in bf16")
    ap.add_argument("--steps", type=int, default=4, help="the release's default network evaluations (sampling.json)")
    ap.add_argument("--guidance", type=float, default=3.0, help="the release's default guidance (sampling.json)")
    ap.add_argument(
        "--guidance-by-steps",
        nargs="*",
        default=[],
        metavar="N=W",
        help="guidance W for N network evaluations (sampling.json guidance_by_steps), e.g. 1=1 2=1.5",
    )
    args = ap.parse_args()
    run, out = Path(args.run), Path(args.out)
    if not (run / "release" / "model.safetensors").is_file():
        raise MissingInput(f"no exported release in {run}/release; finish the run (or resume it) first")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run / "release", tmp)
    if args.bf16:
        sd = load_file(tmp / "model.safetensors")
        save_file(
            {k: v.to(torch.bfloat16) for k, v in sd.items()}, tmp / "model.safetensors", metadata={"format": "pt"}
        )
    prompts = ["a large red circle", "a small blue square above a large yellow circle"] * 4
    a = MMGenPipeline.from_pretrained(run / "release").text_to_image(prompts, steps=4)
    b = MMGenPipeline.from_pretrained(tmp).text_to_image(prompts, steps=4)
    diff = float(np.abs(np.stack(a).astype(int) - np.stack(b)).mean())
    print(f"published weights sample like the run's: mean |difference| {diff:.3f} / 255 per pixel")
    if diff > (0.5 if args.bf16 else 0.0):
        raise CheckpointError(
            f"the published weights sample differently from the run's ({diff:.3f} / 255 per pixel); "
            f"publish again from a complete run/release"
        )
    defaults: dict = {"steps": args.steps, "guidance": args.guidance}
    if args.guidance_by_steps:
        try:
            pairs = [item.split("=") for item in args.guidance_by_steps]
            defaults[GUIDANCE_BY_STEPS] = {str(int(n)): float(w) for n, w in pairs}
        except ValueError as e:
            raise SystemExit(
                f"--guidance-by-steps takes N=W pairs such as 1=1 2=1.5, got {args.guidance_by_steps}"
            ) from e
    (tmp / SAMPLING_FILE).write_text(json.dumps(defaults, indent=1))
    load_sampling_defaults(tmp)  # the file must load: a bad weight or step count fails here, not in a user's call
    report = json.loads(Path(args.eval).read_text())
    command = args.command or f"accelerate launch scripts/train.py --config {run / 'config.yaml'}"
    (tmp / "README.md").write_text(model_card(run, tmp, out, report, args.wall, command, args.bf16, defaults))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(f"{out}: {size:.1f} MB")


if __name__ == "__main__":
    main()
