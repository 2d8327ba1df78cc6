# Two commands do all the set-up on a fresh machine:
#   make serve   # install into .venv, start the server on the tiny CPU predictor, 2 ranks
#   make test    # install into .venv (with test tools), run the whole test suite
#
# TORCH pins the torch wheel: the CPU build by default; on a CUDA machine use
# `make serve TORCH=torch` (or any pip requirement) to get a CUDA build.

PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
ARGS ?= --num-devices 2

.PHONY: serve test lint bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# para-attn publishes only an sdist whose metadata names a git URL in an extra;
# pip >= 25 refuses that outright, so the venv keeps pip < 25.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install -q "pip<25"
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

serve: $(VENV)/.installed
	$(BIN)/para-attn-server $(ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check core plugins contrib_predictors tests benchmarks
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) outputs
