# The two Quick start commands (README.md) and the environment they share.
# Everything installs into .venv/ at the repository root; `make` re-installs only when
# pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned here, not in pyproject.toml: this pair is the one that
# torch-fidelity's torchvision import needs and that this project is tested with.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# pip byte-compiles what it installs one file at a time; compiling the same files afterwards on
# every core is faster (one fresh install each on the 2-core machine: 134 s -> 113 s; same
# 13,554 .pyc files). Like pip, it skips files that do not compile (other Pythons' syntax).
COMPILE := import compileall, sys; compileall.compile_dir(sys.argv[1], quiet=2, workers=0)

.PHONY: install test lint mutation demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile $(TORCH_PINS)
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	$(BIN)/python -c "$(COMPILE)" $(VENV)/lib
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Each curated mutation of tools/mutation.py must fail a test that guards it (docs/testing.md).
mutation: install
	$(BIN)/python tools/mutation.py

# The offline demo: the same DAG as the paper's study, on this CPU, into results/demo/.
demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile profiles/demo

clean:
	rm -rf $(VENV)
