# `make demo` and `make test` work on a fresh machine with only Python 3.11: each creates the venv
# and installs lifelab into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/lifelab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: $(BIN)/lifelab
	$(BIN)/lifelab sweep demo --name demo-$$(date +%Y%m%d-%H%M%S)

test: $(BIN)/lifelab
	$(BIN)/python -m pytest -q -n 2

lint: $(BIN)/lifelab
	$(BIN)/ruff check .

bench: $(BIN)/lifelab
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) lifelab-sweeps
