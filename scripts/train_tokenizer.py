#!/usr/bin/env python
"""Train a tokenizer from its recipe.

    python scripts/train_tokenizer.py text --recipe tokenizers/text/shapes.yaml
    python scripts/train_tokenizer.py image --recipe tokenizers/image/shapes_kl.yaml [--resume auto]

The artifact is saved next to the recipe, in a folder of the recipe's name (`tokenizers/text/shapes/`),
unless --out says otherwise. Recipes accept `key=value` overrides after the arguments.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mmgen.cli import cli_main, output_folder
from mmgen.config import TextTokenizerRecipe, load_config
from mmgen.tokenizer.text import resolve_artifact, train_text_tokenizer


def text_main(args: argparse.Namespace) -> None:
    recipe = load_config(TextTokenizerRecipe, args.recipe, args.overrides)
    out = Path(args.out) if args.out else resolve_artifact(args.recipe)
    t0 = time.perf_counter()
    tok = train_text_tokenizer(recipe, out)
    sample = "a small red circle <boi><eoi> the same circle in blue"
    print(
        f"trained {recipe.model_type} text tokenizer '{recipe.name}' ({len(tok)} pieces) in "
        f"{time.perf_counter() - t0:.1f}s -> {out}"
    )
    print(f"  {sample!r} -> {tok.convert_ids_to_tokens(tok(sample).input_ids)}")


def image_main(args: argparse.Namespace) -> None:
    from mmgen.tokenizer_study.train import main as train_image_tokenizer

    train_image_tokenizer(args.recipe, args.overrides, out=args.out, resume=args.resume)


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["text", "image"])
    ap.add_argument("--recipe", required=True, help="YAML recipe under tokenizers/text or tokenizers/image")
    ap.add_argument("--out", default=None, help="artifact folder (default: next to the recipe)")
    ap.add_argument("--resume", default="auto", help="image tokenizers: auto (latest checkpoint), none, or a path")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, key.sub=value")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after the options
    if args.out:
        output_folder(args.out, "--out")
    (text_main if args.kind == "text" else image_main)(args)


if __name__ == "__main__":
    main()
