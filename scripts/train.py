#!/usr/bin/env python
"""Train an mmgen model.

    accelerate launch scripts/train.py                                  # tiny default model on shapes (CPU ok)
    accelerate launch scripts/train.py --config configs/train/shapes_tiny.yaml train.steps=500 model.depth=2
    accelerate launch --config_file configs/accelerate/zero3.yaml scripts/train.py --config ...

Overrides are `key.sub=value`. The run folder (train.output_dir) receives config.yaml, metrics.jsonl,
samples/, checkpoints/ and, at the end, release/ (EMA weights + tokenizers, for scripts/generate.py).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mmgen.cli import check_option, cli_main
from mmgen.config.schema import AT_LEAST_0

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "configs" / "train" / "shapes_tiny.yaml"


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT), help="a RunConfig YAML (configs/train/*.yaml)")
    ap.add_argument("--resume", default="auto", help="auto (latest checkpoint of the run, if any), none, or a path")
    ap.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="train at most this many steps in this invocation, then checkpoint and exit (resume later)",
    )
    ap.add_argument("overrides", nargs="*", help="key.sub=value")
    args = ap.parse_args(argv)
    if args.stop_after is not None:
        check_option("--stop-after", args.stop_after, AT_LEAST_0)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(REPO)  # recipe and tokenizer paths in configs are relative to the repository

    from mmgen.config import RunConfig, load_config
    from mmgen.train.loop import Trainer

    cfg = load_config(RunConfig, args.config, args.overrides)
    trainer = Trainer(cfg, resume=args.resume)
    if trainer.resumed_from is not None and trainer.engine.is_main:
        print(f"resumed from {trainer.resumed_from} at step {trainer.step}")
        if trainer.config_changes:
            print(
                f"the config differs from the one this run started with (kept as config-until-step-"
                f"{trainer.step:07d}.yaml): {'; '.join(trainer.config_changes)}. To start afresh instead, "
                f"use another train.output_dir or --resume none"
            )
    trainer.train(max_steps=args.stop_after)
    if trainer.engine.is_main:
        if trainer.step >= cfg.train.steps:
            print(f"done: {cfg.train.output_dir}/release (EMA weights), samples in {cfg.train.output_dir}/samples")
        else:
            print(f"stopped at step {trainer.step}; continue with the same command (--resume auto)")
    trainer.engine.end()


if __name__ == "__main__":
    main()
