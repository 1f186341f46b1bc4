"""Paired comparison of two tokenizers on the same images: the per-image difference of a metric (A minus B),
its mean and a 95 % Student-t interval.

Paired, because the images differ far more from each other than the tokenizers do: a flat sky reconstructs
at 35 dB and foliage at 22 dB under any tokenizer, and that spread would swamp the gap in two independent
means. The interval is mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n) over the n per-image differences d.
"""

from __future__ import annotations

import math
import statistics


def t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t with `dof` degrees of freedom, from the normal quantile z by the Cornish-Fisher
    expansion (Abramowitz & Stegun 26.7.5); within 3e-4 of the exact value for dof >= 5 at p = 0.975."""
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    z = statistics.NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3 + g4 / dof**4


def paired_difference(a: list[dict], b: list[dict], metric: str = "psnr", level: float = 0.95) -> dict:
    """a, b: per-image rows ({"image": name, metric: value, ...}) of two tokenizers. Matches rows by image name
    (both must cover the same images) and returns {n, mean, lo, hi, sd, wins} of A - B, where `wins` counts
    the images on which A is better (a higher value)."""
    va = {r["image"]: float(r[metric]) for r in a}
    vb = {r["image"]: float(r[metric]) for r in b}
    if set(va) != set(vb):
        only = sorted(set(va) ^ set(vb))[:3]
        raise ValueError(
            f"the two tokenizers were evaluated on different images (e.g. {only}): evaluate both on one set"
        )
    if len(va) < 2:
        raise ValueError(f"a paired interval needs at least 2 images, got {len(va)}")
    d = [va[k] - vb[k] for k in sorted(va)]
    n, mean, sd = len(d), statistics.fmean(d), statistics.stdev(d)
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "wins": sum(x > 0 for x in d)}


def per_image_rows(results: dict, image_set: str) -> dict[str, list[dict]]:
    """{row name: per-image rows} of a results.json: `scripts/eval_tokenizer.py`'s (one image set, `per_image`
    at the top) or `scripts/eval_references.py`'s (`sets` -> image set -> `per_image`)."""
    if "sets" in results:
        if image_set not in results["sets"]:
            raise KeyError(f"no image set '{image_set}' (it has: {', '.join(results['sets'])})")
        return results["sets"][image_set]["per_image"]
    return results.get("per_image", {})
