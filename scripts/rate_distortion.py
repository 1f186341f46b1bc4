#!/usr/bin/env python
"""Rate-distortion figure: PSNR against bits per token, from `scripts/eval_tokenizer.py` results.

    python scripts/rate_distortion.py results/tokenizers/rd_kodak/results.json \
        results/tokenizers/kodak_f8/results.json --out results/tokenizers/rate_distortion.png

One series per `series` label of the rows (set by eval_tokenizer.py --series): VQ codebook sizes, FSQ level
lists, and a continuous latent quantised to k bits per channel. Discrete points are also drawn at their
effective bits (entropy of code usage), hollow. A `scripts/eval_references.py` file adds its trunk-free
reference curves (dashed) for the image set `--images`; `--patch F` keeps only the rows of f x f tokens:

    python scripts/rate_distortion.py results/tokenizers/rd_kodak/results.json \
        results/tokenizers/kodak_f8/results.json results/tokenizers/references.json --patch 8 \
        --out results/tokenizers/rate_distortion_references.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmgen.cli import cli_main


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="results.json files written by eval_tokenizer.py")
    ap.add_argument("--out", default="results/tokenizers/rate_distortion.png")
    ap.add_argument("--title", default="")
    ap.add_argument("--images", default="kodak", help="image set taken from eval_references.py files")
    ap.add_argument("--patch", type=int, default=0, help="keep only rows of f x f tokens (0 = all)")
    args = ap.parse_args(argv)

    from mmgen.tokenizer_study.report import rate_distortion_figure

    rows = []
    for path in args.results:
        p = Path(path)
        if not p.is_file():
            sys.exit(f"rate_distortion: {p} not found; run scripts/eval_tokenizer.py first")
        data = json.loads(p.read_text())
        if "sets" in data:  # eval_references.py: rows per image set
            if args.images not in data["sets"]:
                sys.exit(f"rate_distortion: {p} has no image set {args.images!r} (it has {', '.join(data['sets'])})")
            data = data["sets"][args.images]
        rows += data["rows"]
    if args.patch:
        rows = [r for r in rows if r["token"] == f"{args.patch}x{args.patch}"]
    out = rate_distortion_figure(rows, args.out, title=args.title)
    print("series | tokenizer | bits/token | entropy | PSNR (dB)")
    for r in sorted(rows, key=lambda r: (r.get("series", ""), r["bits_out"])):
        ent = f"{r['code_entropy_bits']:.2f}" if "code_entropy_bits" in r else "-"
        print(f"{r.get('series', '')} | {r['name']} | {r['bits_out']:g} | {ent} | {r['psnr']:.2f}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
