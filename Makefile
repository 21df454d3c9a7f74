# make train: the main job (RePB on Fashion-MNIST, 2 workers); make test: lint and the whole test suite.
# Each creates .venv and installs what it needs first (about 3 minutes on a fresh machine).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[ray,mlflow]"
	touch $@

$(VENV)/.all: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[all,dev]"
	touch $@ $(VENV)/.run

install: $(VENV)/.run
install-all: $(VENV)/.all

data:
	@test -d /usr/share/datasets/fashion-mnist || (command -v apt-get >/dev/null && \
	  (apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist))) || \
	  echo "Fashion-MNIST not installed: see README (data_dir or download)"

train: install data
	$(BIN)/repb-ray train --config jobs/configs/fashion_mnist_repb.yaml

lint: install-all
	$(BIN)/ruff check repb_ray tests benchmarks examples jobs
	$(BIN)/mypy

test-fast: install-all
	$(BIN)/python -m pytest -q -m "not ray and not e2e and not slow" tests

test: lint data
	$(BIN)/python -m pytest -q tests

.PHONY: install install-all data train lint test-fast test
