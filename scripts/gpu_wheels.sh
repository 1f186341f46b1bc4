#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels scripts/gpu_check.sh installs on a GPU machine that has torch,
# transformers and accelerate but no package index: webdataset, deepspeed (built here from its sdist, no ops
# compiled) and the small packages they and the tests need. Binary wheels are fetched for CPython 3.10-3.13 on
# x86_64 Linux, since the GPU machine's Python is not known in advance. Run on a machine that reaches the index:
#   scripts/gpu_wheels.sh            # then carry .whl/ with the checkout (a few tens of MB)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
mkdir -p .whl
PURE="webdataset==1.0.2 braceexpand hjson py-cpuinfo einops nvidia-ml-py annotated-types typing-inspection
      typing-extensions pytest pluggy iniconfig pygments packaging exceptiongroup tomli"
BINARY="sentencepiece==0.2.3 msgpack ninja pydantic pydantic-core psutil"
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl $PURE
for v in 3.10 3.11 3.12 3.13; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$v" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl $BINARY
done
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps -w .whl deepspeed==0.19.8
ls .whl | wc -l
du -sh .whl
