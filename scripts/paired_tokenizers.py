#!/usr/bin/env python
"""Paired per-image differences between tokenizers (or trunk-free references) evaluated on the same images.

    python scripts/paired_tokenizers.py results/tokenizers/kodak_f8_pl/results.json results/tokenizers/references.json \
        --pair photo_f8_kl16_pl:photo_f8_fsq_pl --pair photo_f8_kl16_pl:f8-pca16 --out results/tokenizers/paired_f8

For each pair A:B and each metric (PSNR, SSIM): the mean of A - B over the images, its 95 % Student-t interval
and on how many images A is better (`mmgen/tokenizer_study/paired.py`). Results files: what
scripts/eval_tokenizer.py and scripts/eval_references.py write (`--set` picks the image set of the latter).
Prints a Markdown table; `--out` also writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmgen.cli import cli_main
from mmgen.errors import ConfigError
from mmgen.files import read_json
from mmgen.tokenizer_study.paired import paired_difference, per_image_rows


def _rows_by_name(paths: list[str], image_set: str) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for p in paths:
        try:
            results = read_json(Path(p), ConfigError, "give a results.json of eval_tokenizer.py or eval_references.py")
            rows |= per_image_rows(results, image_set)
        except KeyError as e:
            raise ConfigError(f"{p}: {e.args[0]}; pick one with --set") from None
    return rows


def _table(out: list[dict]) -> str:
    lines = ["| A | B | metric | mean A - B | 95 % interval | A better on |", "|---|---|---|---|---|---|"]
    for r in out:
        lines.append(
            f"| {r['a']} | {r['b']} | {r['metric']} | {r['mean']:+.3f} | [{r['lo']:+.3f}, {r['hi']:+.3f}] "
            f"| {r['wins']} / {r['n']} |"
        )
    return "\n".join(lines)


@cli_main
def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="results.json files of eval_tokenizer.py / eval_references.py")
    ap.add_argument("--pair", action="append", required=True, help="A:B, row names in the results (repeatable)")
    ap.add_argument("--set", default="kodak", help="image set of eval_references.py results (kodak, flickr8k-test)")
    ap.add_argument("--metrics", default="psnr,ssim")
    ap.add_argument("--out", default="", help="write OUT.json and OUT.md")
    args = ap.parse_args(argv)
    rows = _rows_by_name(args.results, args.set)
    out = []
    for pair in args.pair:
        a, sep, b = pair.partition(":")
        if not sep or a not in rows or b not in rows:
            missing = [x for x in (a, b) if x not in rows] if sep else [pair]
            raise ConfigError(f"--pair {pair}: no per-image rows for {missing} (the results hold: {', '.join(rows)})")
        for metric in args.metrics.split(","):
            try:
                out.append({"a": a, "b": b, "metric": metric, **paired_difference(rows[a], rows[b], metric)})
            except ValueError as e:
                raise ConfigError(f"--pair {pair}: {e}") from None
    table = _table(out)
    print(table)
    if args.out:
        dest = Path(args.out)
        dest.parent.mkdir(parents=True, exist_ok=True)
        meta = {"results": args.results, "set": args.set}
        dest.with_suffix(".json").write_text(json.dumps({**meta, "pairs": out}, indent=1) + "\n")
        dest.with_suffix(".md").write_text(table + "\n")
    return out


if __name__ == "__main__":
    main()
