#!/usr/bin/env python
"""Bit accounting of image/video tokens: bits in, bits out, bit compression = in / out.

    python scripts/bits.py                                   # presets (the design's 409.6 and 48, SD, FLUX, ...)
    python scripts/bits.py tokenizers/image/photo_f8_vq --images kodak   # + a trained tokenizer's effective bits
    python scripts/bits.py --json

bits in = pixels per token x 3 channels x 8 bits; bits out = channels x dtype bits (continuous),
log2 K per codebook (VQ), sum of log2 levels (FSQ). For a trained discrete tokenizer, `--images` also
measures the effective bits: the entropy of its code usage on those images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmgen.cli import cli_main


def _table(rows: list[dict]) -> str:
    cols = [
        "name",
        "token",
        "bottleneck",
        "bits_in",
        "bits_out",
        "compression",
        "effective_bits",
        "effective_compression",
        "note",
    ]
    cols = [c for c in cols if any(c in r for r in rows)]
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, width))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, width)) for row in cells]
    return "\n".join(lines)


@cli_main
def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokenizers", nargs="*", help="trained tokenizer folders (or recipes NAME.yaml)")
    ap.add_argument("--images", default="", help="effective bits of discrete tokenizers on: kodak, a folder, a zip")
    ap.add_argument("--limit", type=int, default=0, help="only the first N images")
    ap.add_argument("--dtype-bits", type=int, default=16, help="bits per continuous channel (bfloat16: 16)")
    ap.add_argument("--no-presets", action="store_true")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)

    from mmgen.tokenizer.bits import PRESETS, effective_compression, tokenizer_bits

    rows = [] if args.no_presets else [p.row() for p in PRESETS.values()]
    images = None
    for path in args.tokenizers:
        from mmgen.tokenizer.image import load_image_tokenizer

        try:
            tok = load_image_tokenizer(path)
        except FileNotFoundError as e:
            sys.exit(f"bits: {e}")
        bits = tokenizer_bits(tok, args.dtype_bits, name=Path(path).with_suffix("").name)
        row = bits.row()
        if args.images and tok.kind != "kl":
            from mmgen.tokenizer.evaluate import evaluate
            from mmgen.tokenizer.image_data import eval_images

            images = images or list(eval_images(args.images, args.limit))
            usage = evaluate(tok, images, bits).usage
            assert usage is not None
            row["effective_bits"] = round(usage["entropy_bits"], 3)
            row["effective_compression"] = round(effective_compression(bits, usage["entropy_bits"]), 2)
            row["note"] = f"{usage['codes_used']} of {usage['codebook_size']} codes used on {len(images)} images"
        rows.append(row)
    print(json.dumps(rows, indent=1) if args.json else _table(rows))
    return rows


if __name__ == "__main__":
    main()
