# fairnode — the two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck unit models gpu clean

# Create the venv if missing and install the project. torch is pinned to the local CPU build first:
# an unpinned torch (pulled by monai) would download a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/fairnode serve

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest

test: lint typecheck unit

# Retrain every bundled model from scratch with fixed seeds (tens of minutes on 2 CPU cores).
models: install
	$(BIN)/fairnode model train --all
	$(BIN)/fairnode model list

# Swap the CPU runtime for the CUDA one (never both installed).
gpu: install
	$(BIN)/python -m pip uninstall -y onnxruntime
	$(BIN)/python -m pip install -q 'onnxruntime-gpu==1.31.1'

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
