"""Command-line options that the tokenizer study scripts share (scripts/bits.py, eval_references.py,
eval_tokenizer.py). Only argparse is imported here, so a script's `--help` stays fast."""

from __future__ import annotations

import argparse


def add_image_set_options(
    ap: argparse.ArgumentParser, default: str, images_help: str, limit_help: str = "evaluate only the first N images"
) -> None:
    """`--images SPEC` (a set `image_data.eval_images` reads: 'kodak', a directory, a .zip, ...) and
    `--limit N` (only its first N images; 0 = all)."""
    ap.add_argument("--images", default=default, help=images_help)
    ap.add_argument("--limit", type=int, default=0, help=limit_help)
