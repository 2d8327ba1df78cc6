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
# The web page's tests drive this browser (Debian's chromium; never a downloaded one).
CHROMIUM ?= /usr/bin/chromium
CHROMIUM_INSTALL := apt-get install -y --no-install-recommends chromium fonts-liberation

.PHONY: serve test chromium lint bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# para-attn publishes only an sdist whose metadata names a git URL in an extra;
# pip >= 25 refuses that outright, so the venv keeps pip < 25.
$(VENV)/.installed: pyproject.toml core/client/pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install -q "pip<25"
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e core/client -e ".[test]"
	touch $@

serve: $(VENV)/.installed
	$(BIN)/para-attn-server $(ARGS)

test: $(VENV)/.installed chromium
	PARA_ATTN_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -n 2 --dist loadfile

# Installs chromium when it is missing and this user can (root); otherwise
# tests/integration/test_webui.py fails with the command to run.
chromium:
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive $(CHROMIUM_INSTALL); \
	  else \
	    echo "$(CHROMIUM) is missing: the web page tests will fail; install it with: sudo $(CHROMIUM_INSTALL)" >&2; \
	  fi; \
	fi

lint: $(VENV)/.installed
	$(BIN)/ruff check core plugins contrib_predictors tests benchmarks
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) outputs
