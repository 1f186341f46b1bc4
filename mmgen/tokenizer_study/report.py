"""Tables and figures of the tokenizer study: Markdown results, side-by-side crops, rate-distortion plot."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def markdown_table(rows: list[dict]) -> str:
    """One row per evaluated tokenizer (summaries from `EvalResult.summary`).

    effective bits: entropy of code usage (discrete; summed over channels for k-bit latents), or the KL rate
    of the posterior for a full-precision continuous latent.
    """
    head = (
        "| tokenizer | token | bottleneck | bits in | bits out | compression | PSNR (dB) | SSIM "
        "| codes used | effective bits | perplexity | FD (in-project) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        groups = f"{r['code_groups']} x " if "code_groups" in r else ""
        used = f"{r['code_codes_used']} / {groups}{r['code_codebook_size']}" if "code_codes_used" in r else "-"
        ent = f"{r['code_entropy_bits']:.2f}" if "code_entropy_bits" in r else "-"  # entropy of code usage
        if "code_entropy_bits" not in r and "kl_rate_bits" in r:
            ent = f"{r['kl_rate_bits']:.1f} (KL rate)"
        ppl = f"{r['code_perplexity']:.0f}" if "code_perplexity" in r and "code_groups" not in r else "-"
        fd = f"{r['fd_in_project']:.2f}" if "fd_in_project" in r else "-"
        lines.append(
            f"| {r['name']} | {r['token']} | {r['bottleneck']} | {r['bits_in']} | {r['bits_out']:g} "
            f"| {r['compression']:g} | {r['psnr']:.2f} | {r['ssim']:.4f} | {used} | {ent} | {ppl} | {fd} |"
        )
    return "\n".join(lines) + "\n"


def _label(text: str, width: int, height: int = 18) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(im).text((3, 3), text, fill=(0, 0, 0))
    return np.asarray(im)


def crops_figure(
    originals: dict[str, np.ndarray],
    recons: dict[str, dict[str, np.ndarray]],
    path: str | Path,
    crop: int = 128,
    gap: int = 4,
) -> Path:
    """A grid at full resolution (no resampling): one row per image, columns original then each tokenizer.

    `recons[tokenizer][image]` are (H, W, 3) uint8. The crop is taken around each image's most detailed
    region (largest local gradient energy), the same window in every column.
    """
    from PIL import Image

    cols = ["original"] + list(recons)
    crop = min([crop] + [min(img.shape[:2]) for img in originals.values()])
    rows = []
    for name, img in originals.items():
        top, left = _busiest_window(img, crop)
        tiles = [img] + [recons[c][name] for c in recons]
        cells = [t[top : top + crop, left : left + crop] for t in tiles]
        row = np.full((crop, len(cells) * (crop + gap) - gap, 3), 255, np.uint8)
        for k, cell in enumerate(cells):
            row[:, k * (crop + gap) : k * (crop + gap) + crop] = cell
        rows.append(_label(f"{name} [{top}:{top + crop}, {left}:{left + crop}]", row.shape[1]))
        rows.append(row)
        rows.append(np.full((gap, row.shape[1], 3), 255, np.uint8))
    header = np.concatenate([_label(c[: crop // 6], crop + gap) for c in cols], axis=1)[:, : rows[1].shape[1]]
    grid = np.concatenate([header] + rows, axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path, optimize=True)
    return path


def _busiest_window(img: np.ndarray, crop: int) -> tuple[int, int]:
    g = img.astype(np.float32).mean(axis=2)
    energy = np.abs(np.diff(g, axis=0))[:, :-1] + np.abs(np.diff(g, axis=1))[:-1, :]
    h, w = energy.shape
    best, pos = -1.0, (0, 0)
    for top in range(0, max(1, h - crop), crop // 2):
        for left in range(0, max(1, w - crop), crop // 2):
            e = float(energy[top : top + crop, left : left + crop].mean())
            if e > best:
                best, pos = e, (top, left)
    return pos


def rate_distortion_figure(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """PSNR against bits per token (log x): one series per `series` key of the rows.

    Points are also drawn at their effective bits, hollow, joined to the nominal point by a thin line: the
    entropy of code usage (discrete, k-bit), or the posterior's KL rate (a full-precision KL latent).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    series: dict[str, list[dict]] = {}
    for r in rows:
        series.setdefault(r.get("series", r["name"]), []).append(r)
    markers = iter("osD^v<>ph*")
    for label, pts in series.items():
        pts = sorted(pts, key=lambda r: r["bits_out"])
        m = next(markers, "o")
        ls = "--" if pts[0].get("reference") else "-"  # trunk-free references (eval_references.py): dashed
        line = ax.plot([r["bits_out"] for r in pts], [r["psnr"] for r in pts], marker=m, ls=ls, label=label)[0]
        for r in pts:
            eff = r.get("code_entropy_bits", r.get("kl_rate_bits"))
            if eff is not None:
                ax.plot([r["bits_out"], eff], [r["psnr"]] * 2, lw=0.6, color=line.get_color())
                ax.plot(eff, r["psnr"], marker=m, mfc="none", color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlabel(
        "bits per token (filled: capacity; hollow: code entropy, or KL rate of the posterior)\n"
        "continuous: latent quantised to k bits per channel without retraining; 16 bits = bfloat16"
    )
    ax.set_ylabel("PSNR (dB), mean over images")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path
