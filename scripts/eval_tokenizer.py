#!/usr/bin/env python
"""Reconstruction evaluation of image tokenizers on a directory or zip of images (Kodak by default).

    python scripts/eval_tokenizer.py tokenizers/image/photo_f8_kl tokenizers/image/photo_f8_vq \
        tokenizers/image/photo_f8_fsq --out results/tokenizers/kodak_f8 [--kbits 1,2,3,4,6,8]
    python scripts/eval_tokenizer.py --train-feature-net       # the in-project FD network (~5 min)

Per tokenizer: PSNR and SSIM computed per image on 8-bit [0, 1] reconstructions, then averaged over images;
codebook usage, entropy and perplexity of discrete tokenizers; a Frechet distance on 32x32-tile features of
a CIFAR-10 classifier trained in this project (in-project, not comparable to published rFID); the bit
accounting. Continuous latents are rounded to bfloat16 before decoding, so "bits out" is what was decoded.
`--kbits` adds rows for every continuous tokenizer with its latent quantised to k bits per channel (Lloyd-Max
per channel, fitted on training crops; no retraining). Writes results.json, results.md and crops.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from mmgen.cli import check_option, cli_main, output_folder
from mmgen.config.schema import AT_LEAST_0, Range
from mmgen.errors import ConfigError, DataError
from mmgen.tokenizer_study.options import add_image_set_options

REPO = Path(__file__).resolve().parents[1]


def _kbit_quantizers(tok, ks: list[int]):
    from mmgen.tokenizer_study.image_data import CropSampler, build_pools
    from mmgen.tokenizer_study.kbit import KBitQuantizer

    r = tok.recipe
    pools = build_pools(r, "train", limit=max(64, r.batch_size * 8))
    sampler = CropSampler(pools, r.source_weights or [1.0] * len(pools), r.crop_size, r.batch_size, r.seed + 1)
    c = tok.latent_channels
    # crops of different sources differ in size: pool latent positions as [M, C, 1, 1]
    z = torch.cat([tok.encode(sampler(i)[1]).permute(0, 2, 3, 1).reshape(-1, c) for i in range(16)])
    z = z.view(-1, c, 1, 1)
    return {k: KBitQuantizer.fit(z, k) for k in ks}


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokenizers", nargs="*", help="tokenizer folders (or recipes tokenizers/image/NAME.yaml)")
    add_image_set_options(ap, "kodak", "'kodak', 'shapes-test', a directory or a .zip of images")
    ap.add_argument("--out", default="results/tokenizers/eval", help="output folder")
    ap.add_argument("--kbits", default="", help="comma list of k: also evaluate continuous latents at k bits/channel")
    ap.add_argument(
        "--tag", default="", help="appended to the series labels of the rate-distortion figure (e.g. ', 1200 steps')"
    )
    ap.add_argument("--no-fd", action="store_true", help="skip the in-project Frechet distance")
    ap.add_argument(
        "--feature-net", default=None, help="feature network folder (default results/tokenizers/feature_net)"
    )
    ap.add_argument("--train-feature-net", action="store_true", help="train the FD feature network and exit")
    ap.add_argument("--figure", default="kodim05.png,kodim14.png,kodim23.png", help="images shown in crops.png")
    args = ap.parse_args(argv)

    from mmgen.tokenizer_study import feature_net as fn

    if args.train_feature_net:
        net = fn.train_feature_net(args.feature_net or fn.DEFAULT_FOLDER)
        print(
            f"feature net saved; {json.loads((Path(args.feature_net or fn.DEFAULT_FOLDER) / 'config.json').read_text())}"
        )
        return net
    if not args.tokenizers:
        ap.error("name at least one tokenizer folder (or use --train-feature-net)")
    check_option("--limit", args.limit, AT_LEAST_0)
    if not all(k.strip().isdigit() and int(k) in Range(1, 16) for k in args.kbits.split(",") if k.strip()):
        raise ConfigError(f"--kbits {args.kbits!r}: give a comma list of bits per channel, each in 1..16")
    output_folder(args.out, "--out")
    run(args, fn)


def run(args: argparse.Namespace, fn) -> None:
    from mmgen.tokenizer.image import load_image_tokenizer
    from mmgen.tokenizer_study.bits import tokenizer_bits
    from mmgen.tokenizer_study.evaluate import evaluate
    from mmgen.tokenizer_study.image_data import eval_images
    from mmgen.tokenizer_study.report import crops_figure, markdown_table

    t0 = time.perf_counter()
    images = list(eval_images(args.images, args.limit))
    if not images:
        raise DataError(f"no images found in {args.images}; give a directory or .zip of .png/.jpg images")
    net = None if args.no_fd else fn.load_feature_net(args.feature_net or fn.DEFAULT_FOLDER)
    keep = [n for n in args.figure.split(",") if n in dict(images)] or [images[0][0]]
    ks = [int(k) for k in args.kbits.split(",") if k.strip()]
    rows, per_image, recons = [], {}, {}
    for path in args.tokenizers:
        tok = load_image_tokenizer(path)
        name = Path(path).with_suffix("").name
        bits = tokenizer_bits(tok, name=name)
        # discrete runs of one kind form one curve over codebook sizes; a continuous run is a curve over k
        series = {"kl": f"{name}, k bits/channel", "vq": "VQ", "fsq": "FSQ"}[tok.kind] + args.tag
        bf16 = (lambda z: z.bfloat16().float()) if tok.kind == "kl" else None
        res = evaluate(tok, images, bits, feature_net=net, latent_fn=bf16, keep=keep)
        rows.append({**res.summary(), "series": series, "path": str(path)})
        per_image[name], recons[name] = res.per_image, res.recon
        print(
            f"{name}: PSNR {rows[-1]['psnr']:.2f} dB, SSIM {rows[-1]['ssim']:.4f}, "
            f"compression {bits.compression:.1f} ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
        if tok.kind == "kl" and ks:
            for k, q in _kbit_quantizers(tok, ks).items():
                kb = tokenizer_bits(tok, dtype_bits=k, name=f"{name}@{k}bit")
                r = evaluate(tok, images, kb, feature_net=net, latent_fn=q, code_fn=q.codes, codebook_size=2**k)
                rows.append({**r.summary(), "series": series, "path": str(path)})
                per_image[kb.name] = r.per_image
                print(f"  {kb.name}: PSNR {rows[-1]['psnr']:.2f} dB ({kb.bits_out:g} bits/token)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "images": args.images,
        "n_images": len(images),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu only'}",
        "notes": [
            "PSNR/SSIM: per image on 8-bit [0, 1] images (data_range=1), then the mean over images",
            "fd_in_project: Frechet distance on 32x32 tiles, features of the project's own CIFAR-10 "
            "classifier; not comparable to published rFID",
            "continuous latents rounded to bfloat16 before decoding; k-bit rows use a per-channel "
            "Lloyd-Max quantiser; their entropy is the sum of per-channel entropies",
        ],
    }
    (out / "results.json").write_text(json.dumps({**meta, "rows": rows, "per_image": per_image}, indent=1) + "\n")
    md = f"Images: {args.images} ({len(images)}), metrics averaged per image.\n\n" + markdown_table(rows)
    (out / "results.md").write_text(md)
    originals = {n: img for n, img in images if n in keep}
    crops_figure(originals, {n: r for n, r in recons.items() if r}, out / "crops.png")
    print(md + f"-> {out}/results.json, results.md, crops.png ({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
