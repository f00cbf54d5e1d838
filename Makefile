# cifarlab: `make train` trains the default recipe, `make test` runs lint, types and tests.
# Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned: on these machines torch==2.13.0 is a CPU build on local disk; a looser
# requirement would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
RECIPE ?= base
DATA   ?= $(wildcard ../shared/data/cifar10-train-jpeg.tgz)
ARGS   ?=

.PHONY: install train test lint browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(STAMP)

train: install
	$(BIN)/cifarlab train --recipe $(RECIPE) $(if $(DATA),--data $(DATA)) $(ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src/cifarlab

# The report and web-demo tests drive a real headless Chromium (Debian's package).
browser:
	bash scripts/install-browser.sh

test: lint browser
	$(BIN)/pytest -q --durations=8

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
