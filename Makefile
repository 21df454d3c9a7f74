# make train: the main job (RePB on Fashion-MNIST, 2 workers); make test: lint, the docs (strict) and the
# whole test suite; make docs: the documentation site in site/.
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
	$(BIN)/pip install -q -e ".[all,dev,docs]"
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

docs: install-all
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q

test-fast: install-all
	$(BIN)/python -m pytest -q -m "not ray and not e2e and not slow" tests

test: lint docs data
	$(BIN)/python -m pytest -q --durations=15 tests

.PHONY: install install-all data train lint docs test-fast test
