# Set-up on a fresh machine is part of both targets: the virtual environment is created when it is
# absent and reused when present, the project is (re)installed when pyproject.toml changes, and
# MNIST is fetched and verified when its files are missing or corrupt.
#   make train [ARGS="trainer.max_epochs=5 ..."]   train the paper's LeNet-5 (python train.py model=paper)
#   make test  [ARGS="-k paper ..."]               run the test suite

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: train test data install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

data: $(STAMP)
	$(BIN)/python -m lenet5.mnist data/mnist

train: data
	$(BIN)/python train.py model=paper $(ARGS)

test: data
	$(BIN)/python -m pytest $(ARGS)
