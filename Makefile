# cifarlab: `make train` trains the default recipe, `make test` runs lint, types and tests.
# Each target installs what it needs into .venv first: `train` only what training needs,
# `test` the development tools on top, `lab` JupyterLab for the notebooks in examples/, and
# `notebooks` reruns those notebooks with their full settings and saves their outputs in them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -q --disable-pip-version-check
# torch is pinned: on these machines torch==2.13.0 is a CPU build on local disk; a looser
# requirement would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
RECIPE ?= base
DATA   ?= $(wildcard ../shared/data/cifar10-train-jpeg.tgz)
ARGS   ?=
NOTEBOOKS ?=

.PHONY: install install-dev train test test-quick lint browser lab notebooks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# What training needs: torch, numpy, pillow, tqdm, matplotlib, pyyaml. No extras.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) "$(TORCH)"
	$(PIP) -e .
	touch $@

# Tests, lint, types, the notebook runner and the optional extras (serve, export, tensorboard).
$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

train: install
	$(BIN)/cifarlab train --recipe $(RECIPE) $(if $(DATA),--data $(DATA)) $(ARGS)

lint: install-dev
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy src/cifarlab

# The report and web-demo tests drive a real headless Chromium (Debian's package).
browser:
	bash scripts/install-browser.sh

test: lint browser
	$(BIN)/pytest -q --durations=8

# The edit loop: lint, types and every test not marked slow, browser or notebook (~90 s).
test-quick: lint
	$(BIN)/pytest -q -m "not slow and not browser and not notebook" --durations=5

# JupyterLab on the notebooks in examples/ (a browser tab opens; Ctrl-C stops it).
lab: install
	$(PIP) -e '.[notebook]'
	$(BIN)/jupyter lab examples/

# Run the notebooks in examples/ top to bottom with their full settings (85 minutes on 2 cores)
# and write them back with their outputs, to commit; NOTEBOOKS=examples/03-fast.ipynb runs one.
# The dev tools hold what runs them: nbclient, ipykernel, ipywidgets (JupyterLab is not needed).
notebooks: install-dev
	$(if $(DATA),CIFARLAB_DATA=$(abspath $(DATA))) $(BIN)/python scripts/run_notebooks.py $(NOTEBOOKS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
