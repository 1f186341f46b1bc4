"""Markdown tables of the inference-first studies, rendered from their JSON results (docs/inference_first.md)."""

from __future__ import annotations


def _f(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if abs(v) < 1e-12:
        return "0"
    return f"{v:.{digits}f}" if abs(v) >= 10**-digits or v == 0 else f"{v:.1e}"


def _pct(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v == 0:
        return "0%"
    return f"{100 * v:.1f}%" if v >= 1e-3 else f"{100 * v:.1e}%"


NAMES = {
    "fm": "flow matching, Euler",
    "imm": "IMM flow map, pushforward",
    "imm_restart": "IMM flow map, restart",
    "bayes": "exact one-time model, Euler/DDIM",
}


def continuous_tables(results: dict) -> str:
    steps = results["config"]["steps"]
    lines = []
    for name, r in results["targets"].items():
        fl = r["floor"]
        metrics = [("energy", "energy distance"), ("sliced_w2", "sliced Wasserstein-2")]
        if "on_support" in fl:
            metrics.append(("on_support", "fraction on the support"))
        for key, title in metrics:
            lines += [
                f"**{name}: {title}** (target vs target: {_f(fl[key]['mean'])} +- {_f(fl[key]['std'])})",
                "",
                "| model | " + " | ".join(f"N = {n}" for n in steps) + " |",
                "|---|" + "---|" * len(steps),
            ]
            for kind, m in r["models"].items():
                vals = [m["per_steps"][str(n)][key] for n in steps]
                cells = [_pct(v) if key == "on_support" else _f(v) for v in vals]
                if key == "energy" and "energy_sd" in m["per_steps"][str(steps[0])]:  # +- over noise draws
                    cells = [f"{c} +- {_f(m['per_steps'][str(n)]['energy_sd'])}" for c, n in zip(cells, steps)]
                lines.append(f"| {NAMES.get(kind, kind)} | " + " | ".join(cells) + " |")
            lines.append("")
        imm1, fm1 = (r["models"][k]["per_steps"][str(steps[0])]["energy"] for k in ("imm", "fm"))
        lines += [f"N = {steps[0]}: flow matching / IMM energy distance = {fm1 / imm1:.0f}x.", ""]
    return "\n".join(lines)


def discrete_tables(results: dict) -> str:
    lines = []
    cfg = results["config"]
    for name, task in results["tasks"].items():
        ar, md, d = task["ar"], task["md"], task["data"]
        pm = md["product_of_marginals"]
        lines += [
            f"**{name}** (N = {d['length']} tokens, {len(d['valid_tuples'])} valid tuples, "
            f"entropy {d['entropy']:.3f} nats)",
            "",
            "| model / sampler | L | valid (exact) | valid (sampled) | KL exact (nats) | KL sampled | "
            "ideal denoiser: valid / KL |",
            "|---|---|---|---|---|---|---|",
            f"| autoregressive | {d['length']} | {_pct(ar['valid_exact'])} | {_pct(ar['valid_sampled'])} | "
            f"{_f(ar['kl_exact'])} | {_f(ar['kl_sampled'])} | 100% / 0 |",
            f"| product of data marginals (analytic) | 1 | {_pct(pm['valid'])} | | {_f(pm['kl'])} | | |",
        ]
        for grid in cfg["grids"]:
            for unmask in cfg["unmask"]:
                for r in md["rows"]:
                    if r["grid"] == grid and r["unmask"] == unmask:
                        lines.append(
                            f"| MD, {grid} grid, {unmask} | {r['steps']} | {_pct(r['valid_exact'])} | "
                            f"{_pct(r['valid_sampled'])} | {_f(r['kl_exact'])} | {_f(r['kl_sampled'])} | "
                            f"{_pct(r['valid_ideal'])} / {_f(r['kl_ideal'])} |"
                        )
        lines.append("")
    return "\n".join(lines)
