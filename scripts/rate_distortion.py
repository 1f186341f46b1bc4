#!/usr/bin/env python
"""Rate-distortion figure: PSNR against bits per token, from `scripts/eval_tokenizer.py` results.

    python scripts/rate_distortion.py results/tokenizers/rd_kodak/results.json \
        results/tokenizers/kodak_f8/results.json --out results/tokenizers/rate_distortion.png

One series per `series` label of the rows (set by eval_tokenizer.py --series): VQ codebook sizes, FSQ level
lists, and a continuous latent quantised to k bits per channel. Discrete points are also drawn at their
effective bits (entropy of code usage), hollow.
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
    args = ap.parse_args(argv)

    from mmgen.tokenizer.report import rate_distortion_figure

    rows = []
    for path in args.results:
        p = Path(path)
        if not p.is_file():
            sys.exit(f"rate_distortion: {p} not found; run scripts/eval_tokenizer.py first")
        data = json.loads(p.read_text())
        rows += data["rows"]
    out = rate_distortion_figure(rows, args.out, title=args.title)
    print("series | tokenizer | bits/token | entropy | PSNR (dB)")
    for r in sorted(rows, key=lambda r: (r.get("series", ""), r["bits_out"])):
        ent = f"{r['code_entropy_bits']:.2f}" if "code_entropy_bits" in r else "-"
        print(f"{r.get('series', '')} | {r['name']} | {r['bits_out']:g} | {ent} | {r['psnr']:.2f}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
