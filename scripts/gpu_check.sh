#!/usr/bin/env bash
# The GPU check in one command (at most 8 minutes on one H100 or H200):
#
#   scripts/gpu_check.sh           # steps 1-4 of scripts/gpu_check.py -> results/gpu/<device>.json + a summary table
#   scripts/gpu_check.sh --cpu     # the same steps on the CPU at tiny sizes (a dry run; CI: tests/test_gpu_check.py)
#
# Extra arguments go to scripts/gpu_check.py (--steps 2,3 / --train-seconds 120 / --out FILE ...).
#
# Offline by design: nothing is downloaded. The project runs from this checkout (PYTHONPATH), not installed.
# Python: $PYTHON, else .venv/bin/python when it exists, else python3 (a GPU machine's own torch, transformers,
# accelerate). Packages that machine lacks (webdataset and braceexpand, deepspeed and its small dependencies,
# sentencepiece, pytest) travel as wheels in .whl/ (git-ignored) and are installed from there with
# `pip install --no-index --find-links .whl` (or --user where site-packages is read-only); without deepspeed
# step 3 trains without ZeRO-2. Fill .whl/ on a machine that reaches the package index with
# scripts/gpu_wheels.sh, and carry it to the GPU machine with the checkout.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TORCH_EXTENSIONS_DIR="$PWD/.cache/torch_extensions"

missing=$("$PY" -c '
import importlib.util
need = {"webdataset": "webdataset", "braceexpand": "braceexpand", "sentencepiece": "sentencepiece",
        "pytest": "pytest", "deepspeed": "deepspeed"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))')
if [ -n "$missing" ]; then
  if [ -d .whl ]; then
    echo "installing from .whl/: $missing"
    "$PY" -m pip install -q --no-index --find-links .whl $missing \
      || "$PY" -m pip install -q --user --no-index --find-links .whl $missing \
      || echo "warning: could not install $missing from .whl/; the steps that need them will fail or fall back"
  else
    echo "warning: missing $missing and no .whl/ folder (see the top of this script)"
  fi
fi
"$PY" -c "import torch, transformers, accelerate; print('torch', torch.__version__, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| cuda', torch.cuda.is_available())"
# 470 s: the 8-minute budget less start-up; each step writes the JSON as it ends, so a cut keeps what was measured
exec timeout --signal=INT --kill-after=15 470 "$PY" scripts/gpu_check.py "$@"
