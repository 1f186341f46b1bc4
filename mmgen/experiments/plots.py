"""Figures of the inference-first studies (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "fm": "flow matching (one time), Euler",
    "imm": "IMM flow map (two times), pushforward",
    "imm_restart": "IMM flow map, restart sampler",
    "bayes": "exact one-time model (no training), Euler/DDIM",
}
STYLE = {"fm": "o-", "imm": "o-", "imm_restart": "^:", "bayes": "s--"}


def plot_continuous(results: dict, samples: dict, out: Path) -> list[Path]:
    """Per target: samples of both trained models per N (plus the target); one figure of metric vs N."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    steps = results["config"]["steps"]
    for name, per_model in samples.items():
        rows = ["fm", "imm", "imm_restart"]
        fig, axes = plt.subplots(len(rows), len(steps) + 1, figsize=(2.2 * (len(steps) + 1), 2.3 * len(rows)))
        for i, kind in enumerate(rows):
            for j, N in enumerate([*steps, None]):
                ax = axes[i, j]
                x = per_model["target"][0] if N is None else per_model[kind][N]
                ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.4, color="k" if N is None else f"C{i}", rasterized=True)
                ax.set(xlim=(-1.6, 1.6), ylim=(-1.6, 1.6), xticks=[], yticks=[], aspect="equal")
                if N is None:
                    ax.set_title("target", fontsize=9)
                else:
                    ed = results["targets"][name]["models"][kind]["per_steps"][str(N)]["energy"]
                    ax.set_title(f"N={N}  ED={ed:.4f}", fontsize=9)
            axes[i, 0].set_ylabel({"fm": "FM Euler", "imm": "IMM pushforward", "imm_restart": "IMM restart"}[kind])
        fig.suptitle(f"{name}: samples with N network evaluations", fontsize=9)
        fig.tight_layout()
        paths.append(out / f"continuous_samples_{name}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    names = list(results["targets"])
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.4), squeeze=False)
    for j, name in enumerate(names):
        res = results["targets"][name]
        for i, metric in enumerate(["energy", "sliced_w2"]):
            ax = axes[i, j]
            for c, kind in enumerate(["fm", "imm", "imm_restart", "bayes"]):
                y = [res["models"][kind]["per_steps"][str(N)][metric] for N in steps]
                ax.plot(steps, y, STYLE[kind], color=f"C{c}", label=LABELS[kind])
            fl = res["floor"][metric]
            ax.axhspan(max(fl["mean"] - fl["std"], fl["mean"] / 3), fl["mean"] + fl["std"], color="0.8")
            ax.axhline(fl["mean"], color="0.4", lw=1, label="target vs target (noise floor)")
            ax.set(
                xscale="log",
                yscale="log",
                xticks=steps,
                xticklabels=[str(n) for n in steps],
                xlabel="sampling steps N",
                title=name,
            )
            ax.minorticks_off()
            ax.set_ylabel("energy distance" if metric == "energy" else "sliced Wasserstein-2")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    paths.append(out / "continuous_metric_vs_steps.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _rows(task: dict, grid: str, unmask: str) -> list[dict]:
    return [r for r in task["md"]["rows"] if r["grid"] == grid and r["unmask"] == unmask]


def plot_discrete(results: dict, out: Path) -> list[Path]:
    """Validity vs tokens per step N/L for every task (model exact, ideal denoiser, sampled), and the poker bars."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    tasks = results["tasks"]
    modes = [(g, u) for g in results["config"]["grids"] for u in results["config"]["unmask"]]
    cols = min(2, len(modes))
    rows_ = -(-len(modes) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(5.2 * cols, 3.9 * rows_), squeeze=False)
    for ax, (grid, unmask) in zip(axes.flat, modes):
        for c, (name, task) in enumerate(tasks.items()):
            rows, N = _rows(task, grid, unmask), task["data"]["length"]
            x = [N / r["steps"] for r in rows]
            ax.plot(x, [r["valid_ideal"] for r in rows], "-", color=f"C{c}", alpha=0.6)
            ax.plot(x, [r["valid_exact"] for r in rows], "o", color=f"C{c}", label=f"{name} (N={N})")
            ax.plot(x, [max(r["valid_sampled"], 1e-7) for r in rows], "x", color=f"C{c}", ms=5)
            ax.axhline(task["ar"]["valid_exact"], color=f"C{c}", ls=":", lw=1)
        ax.set(
            xscale="log",
            yscale="log",
            ylim=(1e-7, 1.5),
            xlabel="tokens per step N / L",
            ylabel="P(valid)",
            title=f"masked diffusion, {grid} grid, {unmask} unmasking",
        )
        ax.minorticks_off()
        ax.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
    axes[0, 0].legend(fontsize=7, title="o model (exact), x sampled,\n- ideal denoiser, : AR", title_fontsize=7)
    fig.tight_layout()
    paths.append(out / "discrete_validity_vs_steps.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    if "poker" in tasks:
        paths.append(_plot_poker(tasks["poker"], results["config"], out))
    return paths


def _plot_poker(task: dict, config: dict, out: Path) -> Path:
    """Bars of P(valid hand) on the poker task: AR, one-step MD, the product of marginals, two-step MD per order."""
    grid = config["grids"][0]
    bars = [
        ("AR", task["ar"]["valid_exact"]),
        ("MD L=1", _rows(task, grid, config["unmask"][0])[0]["valid_exact"]),
        ("product of\nmarginals", task["md"]["product_of_marginals"]["valid"]),
    ]
    for unmask in config["unmask"]:
        bars.append((f"MD L=2\n{unmask}", _rows(task, grid, unmask)[1]["valid_exact"]))
    fig, ax = plt.subplots(figsize=(1.3 * len(bars) + 1, 3.4))
    ax.bar(range(len(bars)), [b[1] for b in bars], color=[f"C{i}" for i in range(len(bars))])
    for i, (_, v) in enumerate(bars):
        ax.text(i, v + 0.02, f"{100 * v:.1f}%", ha="center", fontsize=8)
    ax.set(
        xticks=range(len(bars)),
        ylim=(0, 1.12),
        ylabel="P(valid hand), exact from logits",
        title=f"two-word poker hands ({grid} grid)",
    )
    ax.set_xticklabels([b[0] for b in bars], fontsize=8)
    fig.tight_layout()
    path = out / "discrete_poker.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
