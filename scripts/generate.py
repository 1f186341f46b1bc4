#!/usr/bin/env python
"""Continue interleaved prompts with a trained mmgen model: text, images, and both in turn.

    python scripts/generate.py --model runs/shapes_tiny/release --prompt "a large red circle" --image-first
    python scripts/generate.py --model ... --prompt "a small blue square <image:x.png> the same square in red"
    python scripts/generate.py --model ... --prompt "<image:x.png> this is" --max-images 0     # captioning
    python scripts/generate.py --model ... --prompt '[{"text": "a red circle"}, {"image": "x.png"}]'

Generated text goes to stdout; images as PNG and an HTML page of each interleaved result go to --out.
Prompt images of another size are centre-cropped and resized to the model's image size.
"""

from __future__ import annotations

import argparse
import time

from mmgen.cli import cli_main, output_folder, read_text_file
from mmgen.config.schema import GUIDANCE, STEPS, TIME_GRID, TIME_GRIDS
from mmgen.errors import PromptError


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a release folder (train.output_dir/release)")
    ap.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
    ap.add_argument("--prompts-file", help="a file with one prompt per line")
    ap.add_argument("--out", default="outputs", help="folder for PNGs and HTML")
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"network evaluations per image (1, 2, 4, 8, ...; default: the release's sampling.json, else {STEPS})",
    )
    ap.add_argument(
        "--guidance",
        type=float,
        default=None,
        help=f"classifier-free guidance weight (default: the release's sampling.json, else {GUIDANCE})",
    )
    # sampling flags left out take the release's sampling.json, else SamplingOptions' defaults (shown)
    ap.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="guide only the sampler steps that start at t in [LO, HI] (default 0 1)",
    )
    ap.add_argument("--time-grid", default=None, choices=TIME_GRIDS, help=f"default {TIME_GRID}")
    ap.add_argument(
        "--sampler",
        default=None,
        choices=["pushforward", "euler", "restart"],
        help="default: pushforward for IMM models, euler for flow-matching models",
    )
    ap.add_argument("--image-first", action="store_true", default=None, help="open an image right after the prompt")
    ap.add_argument("--max-images", type=int, default=None, help="default 1")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 32")
    ap.add_argument("--temperature", type=float, default=None, help="default 0 (greedy)")
    ap.add_argument("--top-k", type=int, default=None, help="default 0 (off)")
    ap.add_argument("--top-p", type=float, default=None, help="default 1 (off)")
    ap.add_argument("--seed", type=int, default=None, help="default 0")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    from mmgen.sampling.interleaved import SamplingOptions
    from mmgen.sampling.pipeline import MMGenPipeline

    prompts = list(args.prompt)
    if args.prompts_file:
        text = read_text_file(args.prompts_file, "--prompts-file")
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        ap.error("give at least one --prompt or --prompts-file")
    output_folder(args.out, "--out")
    names = ("steps", "guidance", "time_grid", "image_first", "max_images", "max_new_tokens", "temperature", "top_k")
    flags = {k: getattr(args, k) for k in (*names, "top_p", "seed")} | {"method": args.sampler}  # SamplingOptions
    flags["guidance_interval"] = tuple(args.guidance_interval) if args.guidance_interval else None
    options = {k: v for k, v in flags.items() if v is not None}
    try:
        SamplingOptions(**options).validate()  # before the model loads
    except ValueError as e:
        raise PromptError(f"{e} (see --help)") from e
    pipe = MMGenPipeline.from_pretrained(args.model, device=args.device)
    t0 = time.perf_counter()
    results = pipe(prompts, **options)  # a prompt too long for the context: ContextOverflow, a PromptError
    dt = time.perf_counter() - t0
    for i, r in enumerate(results):
        page = r.save(args.out, name=f"result-{i:03d}")
        print(f"[{i + 1}] {prompts[i]!r} -> {r.text!r} + {len(r.images)} image(s)  ({page})")
    print(f"{len(results)} prompt(s) in {dt:.2f}s")


if __name__ == "__main__":
    main()
