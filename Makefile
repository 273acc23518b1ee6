PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help install install-data install-slurm test test-fast demo bench bench-gpu lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

install: ## create .venv and install vpeft with its dev tools (pip install -e ".[dev]")
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"

install-data: ## add the data extra (tensorflow-cpu, tensorflow-datasets) to .venv, for scripts/prepare_vtab.py
	$(PY) -m pip install --quiet -e ".[data]"

install-slurm: ## add the slurm extra (hydra-submitit-launcher) to .venv, for hydra/launcher=slurm
	$(PY) -m pip install --quiet -e ".[slurm]"

test: ## the whole suite: CPU only, offline
	WANDB_MODE=disabled HF_HUB_OFFLINE=1 $(PY) -m pytest

test-fast: ## the suite without the slow end-to-end tests
	WANDB_MODE=disabled HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow"

demo: ## linear, BitFit, SSF and full fine-tuning on the embedded digits task, one table
	$(PY) scripts/demo.py

bench: ## images/s of the runner against a bare timm loop (numbers in the README)
	$(PY) scripts/bench.py runner
	$(PY) scripts/bench.py data

bench-gpu: ## on a GPU: one task, the 19-task VTAB-1k table and runs per GPU on synthetic data (numbers in the README)
	$(PY) scripts/bench.py gpu

lint: ## ruff
	$(VENV)/bin/ruff check .

format: ## ruff fixes
	$(VENV)/bin/ruff check --fix .

clean: ## remove caches (not runs/)
	rm -rf .pytest_cache .ruff_cache .cache
