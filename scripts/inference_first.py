#!/usr/bin/env python
"""The inference-first studies, end to end on a CPU (one thread by default):

    python scripts/inference_first.py continuous [key=value ...]   # one-time vs two-time models on 2-D targets
    python scripts/inference_first.py discrete [key=value ...]     # autoregressive vs masked diffusion on tuples

Overrides address the study's dataclass (`ContinuousStudyConfig` / `DiscreteStudyConfig`), e.g.
`fit.steps=2000 targets=[ring8]` or `tasks=[poker] samples=1000`. Writes <out>/<study>.json, the markdown
tables <out>/<study>_tables.md and PNG figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmgen.cli import cli_main  # noqa: E402
from mmgen.config import from_dict, merge_overrides, to_dict  # noqa: E402
from mmgen.experiments.plots import plot_continuous, plot_discrete  # noqa: E402
from mmgen.experiments.poker import DiscreteStudyConfig, run_discrete  # noqa: E402
from mmgen.experiments.report import continuous_tables, discrete_tables  # noqa: E402
from mmgen.experiments.toy2d import ContinuousStudyConfig, run_continuous  # noqa: E402

STUDIES = {"continuous": ContinuousStudyConfig, "discrete": DiscreteStudyConfig}


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


@cli_main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", choices=sorted(STUDIES))
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the study config")
    ap.add_argument("--out", default=str(REPO / "results/inference_first"), help="folder for JSON and PNGs")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    cls = STUDIES[args.study]
    # overrides apply on top of the study's own defaults (nested defaults included, e.g. its FitConfig)
    cfg = from_dict(cls, merge_overrides(to_dict(cls()), args.overrides, cls), source="command line")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{args.study} study -> {out}\n{json.dumps(to_dict(cfg))}", flush=True)

    t0 = time.perf_counter()
    if args.study == "continuous":
        results, samples = run_continuous(cfg)
        figures = plot_continuous(results, samples, out)
        tables = continuous_tables(results)
    else:
        results = run_discrete(cfg)
        figures = plot_discrete(results, out)
        tables = discrete_tables(results)
    results["machine"] = machine()
    results["command"] = " ".join(["python scripts/inference_first.py", args.study, *args.overrides])
    results["total_seconds"] = time.perf_counter() - t0
    path = out / f"{args.study}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, allow_nan=False))
    tmp.replace(path)
    m = results["machine"]
    header = (
        f"`{results['command']}` on {m['processor']} ({m['cpus']} cores, {m['torch_threads']} torch thread), "
        f"torch {m['torch']}: {results['total_seconds']:.0f} s wall.\n\n"
    )
    (out / f"{args.study}_tables.md").write_text(header + tables)
    print(tables)
    print(
        f"wrote {path}, {args.study}_tables.md and {', '.join(p.name for p in figures)} in {results['total_seconds']:.0f}s"
    )
    return results


if __name__ == "__main__":
    main()
