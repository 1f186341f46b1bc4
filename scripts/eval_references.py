#!/usr/bin/env python
"""Trunk-free references of the tokenizer study: principal components and k-means of f x f RGB patches.

    python scripts/eval_references.py                       # the study's 10 rows: ~10 min on one CPU core
    python scripts/eval_references.py --rows f8-pca16,f8-kmeans256 --fit-images 100 --images kodak

Each row is fitted on the grid patches of the first `--fit-images` Flickr8k training photos (the split the
tokenizer recipes train on) and evaluated with the trained tokenizers' code (`evaluate.evaluate`: per-image
PSNR / SSIM on 8-bit [0, 1] reconstructions, averaged over images) on each `--images` set: Kodak and the
held-out Flickr8k test photos (`flickr8k-test`, full size, centre-cropped to multiples of 16). PCA latents are
rounded to bfloat16 before decoding (16 bits per channel); a k-means token holds log2 K bits.
Writes OUT.json (rows per image set, per-image metrics, fit details) and OUT.md; `--save DIR` also keeps each
fitted reference as DIR/NAME/{config.json, model.safetensors}. Rows: f{F}-pca{C} or f{F}-kmeans{K}.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import torch

from mmgen.cli import check_option, cli_main
from mmgen.config.schema import AT_LEAST_0, Range
from mmgen.errors import ConfigError, DataError
from mmgen.tokenizer_study.options import add_image_set_options

DEFAULT_ROWS = (
    "f8-pca4,f8-pca8,f8-pca16,f8-kmeans256,f8-kmeans4096,f16-pca8,f16-pca16,f16-pca32,f16-kmeans256,f16-kmeans4096"
)
ROW = re.compile(r"f(\d+)-(pca|kmeans)(\d+)$")


def parse_rows(spec: str) -> list[tuple[str, int, str, int]]:
    """'f8-pca16,f16-kmeans4096' -> [(name, f, kind, c or K)]."""
    rows = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        m = ROW.match(item)
        if not m or int(m[1]) < 1 or int(m[3]) < 1:
            raise ConfigError(
                f"--rows {item!r}: write each row as f<patch>-pca<channels> or f<patch>-kmeans<codes>, "
                "e.g. f8-pca16,f16-kmeans4096"
            )
        rows.append((item, int(m[1]), m[2], int(m[3])))
    if not rows:
        raise ConfigError("--rows is empty; name at least one row, e.g. f8-pca16")
    return rows


def summary_table(sets: dict[str, dict]) -> str:
    """One line per row: bits, then PSNR / SSIM on each image set."""
    names = list(sets)
    head = (
        "| reference | patch | bottleneck | bits / token | compression | "
        + " | ".join(f"{n} PSNR (dB) | {n} SSIM" for n in names)
        + " | fit (s) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    by_set = [{r["name"]: r for r in sets[n]["rows"]} for n in names]
    for r in sets[names[0]]["rows"]:
        cells = " | ".join(f"{s[r['name']]['psnr']:.2f} | {s[r['name']]['ssim']:.4f}" for s in by_set)
        lines.append(
            f"| {r['name']} | {r['token']} | {r['bottleneck']} | {r['bits_out']:g} | {r['compression']:g} "
            f"| {cells} | {r['fit_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


@cli_main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=DEFAULT_ROWS, help="comma list of f<F>-pca<C> / f<F>-kmeans<K>")
    ap.add_argument("--fit-images", type=int, default=600, help="Flickr8k training photos to fit on")
    ap.add_argument("--fit-folder", default="", help="fit on the images of this directory or zip instead")
    images_help = "comma list of evaluation sets: 'kodak', 'flickr8k-test', a directory or a .zip of images"
    add_image_set_options(ap, "kodak,flickr8k-test", images_help, "evaluate only the first N images of each set")
    ap.add_argument("--kmeans-iters", type=int, default=20, help="Lloyd iterations at most")
    ap.add_argument("--kmeans-tol", type=float, default=1e-4, help="stop when the distortion falls by less (relative)")
    ap.add_argument(
        "--kmeans-patches",
        type=int,
        default=0,
        help="fit k-means on a seeded sample of this many patches (0 = every grid patch of the fit images)",
    )
    ap.add_argument("--kmeans-init", default="random", choices=["random", "kmeans++"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/tokenizers/references", help="writes OUT.json and OUT.md")
    ap.add_argument("--save", default="", help="also save each fitted reference under this folder")
    args = ap.parse_args(argv)
    rows = parse_rows(args.rows)
    for flag, v in [
        ("--fit-images", args.fit_images),
        ("--limit", args.limit),
        ("--kmeans-patches", args.kmeans_patches),
    ]:
        check_option(flag, v, AT_LEAST_0)
    check_option("--kmeans-iters", args.kmeans_iters, Range(1, 10_000))
    return run(args, rows)


def _fit_images(args) -> list[torch.Tensor]:
    from mmgen.tokenizer_study.image_data import eval_images, source_images

    if args.fit_folder:
        arrays = [im for _, im in eval_images(args.fit_folder, args.fit_images)]
    else:
        arrays = source_images("flickr8k", "train", args.fit_images)
    if not arrays:
        raise DataError(f"no fit images in {args.fit_folder or 'flickr8k train'}")
    return [torch.from_numpy(im.copy()).permute(2, 0, 1)[None].contiguous() for im in arrays]


def run(args: argparse.Namespace, rows: list[tuple[str, int, str, int]]) -> dict:
    from mmgen.tokenizer_study.evaluate import evaluate
    from mmgen.tokenizer_study.image_data import eval_images
    from mmgen.tokenizer_study.references import KMeansReference, PCAReference

    t0 = time.perf_counter()
    fit = _fit_images(args)
    sets = {}
    for spec in (s.strip() for s in args.images.split(",") if s.strip()):
        sets[spec] = list(eval_images(spec, args.limit))
        if not sets[spec]:
            raise DataError(f"no images found in {spec}; give 'kodak', 'flickr8k-test', a directory or a .zip")
    print(
        f"{len(fit)} fit images, "
        + ", ".join(f"{k}: {len(v)} images" for k, v in sets.items())
        + f" ({time.perf_counter() - t0:.0f}s)",
        flush=True,
    )
    pca_full: dict[int, PCAReference] = {}  # one fit per patch size; fewer channels = its leading components
    for f in {f for _, f, kind, _ in rows if kind == "pca"}:
        t = time.perf_counter()
        pca_full[f] = PCAReference.fit(fit, f, max(n for _, g, kind, n in rows if kind == "pca" and g == f))
        pca_full[f].fit_info["fit_seconds"] = time.perf_counter() - t
    out = {name: {"rows": [], "per_image": {}} for name in sets}
    for name, f, kind, n in rows:
        t = time.perf_counter()
        if kind == "pca":
            ref = pca_full[f].truncate(n)
            fit_info = {**ref.fit_info, "explained_variance": ref.explained_variance}
        else:
            ref = KMeansReference.fit(
                fit,
                f,
                n,
                iters=args.kmeans_iters,
                tol=args.kmeans_tol,
                seed=args.seed,
                max_patches=args.kmeans_patches,
                init=args.kmeans_init,
            )
            fit_info = {**ref.fit_info, "fit_seconds": time.perf_counter() - t}
        if args.save:
            ref.save(Path(args.save) / name)
        bits = ref.bits(name)
        series = f"{'PCA' if kind == 'pca' else 'k-means'} f={f} (no network)"
        options = (
            {"latent_fn": lambda z: z.bfloat16().float()}
            if kind == "pca"
            else {"code_fn": lambda z: z, "codebook_size": n}
        )
        for set_name, images in sets.items():
            res = evaluate(ref, images, bits, **options)
            fit_info.pop("eigenvalues", None)
            out[set_name]["rows"].append(
                {
                    **res.summary(),
                    "series": series,
                    "reference": True,
                    "fit_seconds": fit_info["fit_seconds"],
                    "fit": fit_info,
                }
            )
            out[set_name]["per_image"][name] = res.per_image
        line = ", ".join(f"{s}: {out[s]['rows'][-1]['psnr']:.2f} dB" for s in sets)
        print(f"{name}: {bits.bits_out:g} bits/token, {line} ({time.perf_counter() - t0:.0f}s)", flush=True)
    seconds = round(time.perf_counter() - t0, 1)
    fit_from = args.fit_folder or f"flickr8k train, first {len(fit)} photos"
    meta = {
        "fit_images": fit_from,
        "seed": args.seed,
        "kmeans": {
            "iters": args.kmeans_iters,
            "tol": args.kmeans_tol,
            "patches": args.kmeans_patches or "all",
            "init": args.kmeans_init,
        },
        "seconds": seconds,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu only'}",
        "notes": [
            "PSNR/SSIM: per image on 8-bit [0, 1] images (data_range=1), then the mean over images",
            "PCA latents rounded to bfloat16 before decoding; k-means: log2 K bits per token",
        ],
    }
    result = {**meta, "sets": out}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    md = (
        f"Trunk-free references fitted on {fit_from}; evaluated on "
        + ", ".join(f"{k} ({len(v)} images)" for k, v in sets.items())
        + f"; metrics averaged per image. {seconds:.0f} s on {meta['machine']}.\n\n"
        + summary_table(out)
    )
    path.with_suffix(".md").write_text(md)
    print(md + f"-> {path.with_suffix('.json')}, {path.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
