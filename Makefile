# make train: the main job (RePB on Fashion-MNIST, 2 workers); make test: the test suite.
# Both create .venv and install the project first (about 3 minutes on a fresh machine).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/repb-ray: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/repb-ray

install: $(BIN)/repb-ray

data:
	@test -d /usr/share/datasets/fashion-mnist || (command -v apt-get >/dev/null && \
	  (apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist))) || \
	  echo "Fashion-MNIST not installed: see README (data_dir or download)"

train: install data
	$(BIN)/repb-ray train --config jobs/configs/fashion_mnist_repb.yaml

test: install data
	$(BIN)/python -m pytest -q tests

.PHONY: install data train test
