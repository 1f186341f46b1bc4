# Two commands: `make demo` (set up, prompt the shipped default model releases/shapes, train a short run of its
# recipe) and `make test`.
# Each creates .venv on first use. On a CPU-only machine torch==2.13.0 is installed first (the CPU build);
# set TORCH_SPEC to choose another build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# The main job: prompt releases/shapes (text -> image, interleaved; outputs/demo/index.html), then 300 training steps.
demo: setup
	$(PY) scripts/demo.py

test: setup lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check mmgen scripts tests
	$(VENV)/bin/ruff format --check mmgen scripts tests

clean:
	rm -rf runs .pytest_cache .ruff_cache
