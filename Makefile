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

.PHONY: release setup demo test test-fast lint bench clean

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

# Retrain the shipped model from scratch (configs/train/shapes_release_imm_from_fm.yaml, shapes_release_distill.yaml
# and shapes_release_stage5.yaml say why five stages): about 4.7 h on one core, resumable (each stage resumes from its
# latest checkpoint); then the flow-matching comparator (stages 3-4 with objective.image=fm, no fifth stage,
# ~50 min), the evaluation of the release beside it and beside the IMM stage it distils, and the publication.
# WALL="..." states the wall time.
WALL ?= not recorded (make release WALL="..." states it)
release: setup
	$(PY) scripts/train.py --config configs/train/shapes_release.yaml objective.image=fm train.output_dir=runs/shapes_release_fm
	$(PY) scripts/train.py --config configs/train/shapes_release_stage2.yaml objective.image=fm \
		train.init_from=runs/shapes_release_fm/release train.output_dir=runs/shapes_cont_fm
	$(PY) scripts/train.py --config configs/train/shapes_release_imm_from_fm.yaml
	$(PY) scripts/train.py --config configs/train/shapes_release_distill.yaml
	$(PY) scripts/train.py --config configs/train/shapes_release_stage5.yaml
	$(PY) scripts/train.py --config configs/train/shapes_release_imm_from_fm.yaml objective.image=fm \
		train.output_dir=runs/shapes_fm_stage3
	$(PY) scripts/train.py --config configs/train/shapes_release_imm_from_fm.yaml objective.image=fm \
		train.init_from=runs/shapes_fm_stage3/release train.steps=2500 train.lr=3e-4 train.output_dir=runs/shapes_fm_stage4
	$(PY) scripts/eval_shapes.py --model runs/shapes_distill_s5/release --model runs/shapes_distill_ph/release \
		--model runs/shapes_fm_stage4/release \
		--model runs/shapes_imm_bf0/release --model runs/shapes_fm_stage3/release \
		--steps 1 2 4 8 16 --guidance 1 1.5 3 --n 200 --n-unseen 100 --seed 0 1 2 --threads 1 --out results/shapes_release.json
	$(PY) scripts/publish_release.py --run runs/shapes_distill_s5 --out releases/shapes --guidance-by-steps 1=1 2=1 4=1.5 \
		--eval results/shapes_release.json --wall "$(WALL)" --command "make release"

test: setup lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check mmgen scripts tests
	$(VENV)/bin/ruff format --check mmgen scripts tests

clean:
	rm -rf runs .pytest_cache .ruff_cache
