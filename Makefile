# Two commands do all the set-up on a fresh machine:
#   make serve   # install into .venv, start the server on the tiny CPU predictor, 2 ranks
#   make test    # install into .venv (with test tools), run the whole test suite
#
# TORCH pins the torch wheel: the CPU build by default; on a CUDA machine use
# `make serve TORCH=torch` (or any pip requirement) to get a CUDA build. A TORCH other
# than the one .venv was made with installs torch again (.venv/.torch records it).

PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
ARGS ?= --num-devices 2
# The web page's tests drive this browser (Debian's chromium; never a downloaded one).
CHROMIUM ?= /usr/bin/chromium
CHROMIUM_INSTALL := apt-get install -y --no-install-recommends chromium fonts-liberation

.PHONY: serve test chromium lint bench clean

# para-attn publishes only an sdist whose metadata names a git URL in an extra;
# pip >= 25 refuses that outright, so the venv keeps pip < 25.
$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "pip<25"

# .venv/.torch holds the requirement torch was installed with: another TORCH installs again.
TORCH_STAMP := $(VENV)/.torch
ifneq ($(shell cat $(TORCH_STAMP) 2>/dev/null),$(strip $(TORCH)))
.PHONY: $(TORCH_STAMP)
endif
# --force-reinstall: a torch already there satisfies `torch` (the CPU build does too), so
# without it a new TORCH would change nothing; then its dependencies (CUDA's libraries).
$(TORCH_STAMP): | $(BIN)/activate
	$(BIN)/python -m pip install -q --force-reinstall --no-deps "$(TORCH)"
	$(BIN)/python -m pip install -q "$(TORCH)"
	printf '%s\n' '$(strip $(TORCH))' > $@

# Torch first (order only): the project's own install must find it there, not pull one.
$(VENV)/.installed: pyproject.toml core/client/pyproject.toml | $(BIN)/activate $(TORCH_STAMP)
	$(BIN)/python -m pip install -q "pip<25"
	$(BIN)/python -m pip install -q -e core/client -e ".[test]"
	touch $@

serve: $(VENV)/.installed $(TORCH_STAMP)
	$(BIN)/para-attn-server $(ARGS)

test: $(VENV)/.installed $(TORCH_STAMP) chromium
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

lint: $(VENV)/.installed $(TORCH_STAMP)
	$(BIN)/ruff check core plugins contrib_predictors tests benchmarks
	$(BIN)/mypy

bench: $(VENV)/.installed $(TORCH_STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) outputs
