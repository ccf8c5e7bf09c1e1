# `make demo` and `make test` work on a fresh machine with only Python 3.11: each creates the venv
# and installs lifelab into it first, with the exact versions of requirements.lock.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test test-fast lint bench lock clean docs

$(BIN)/lifelab: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.lock -e '.[dev]'
	touch $@

demo: $(BIN)/lifelab
	$(BIN)/lifelab sweep demo --name demo-$$(date +%Y%m%d-%H%M%S)

test: $(BIN)/lifelab
	$(BIN)/python -m pytest -q -n 2

# everything but the tests that start Ray (the `ray` marker): about two minutes
test-fast: $(BIN)/lifelab
	$(BIN)/python -m pytest -q -n 2 -m "not ray"

lint: $(BIN)/lifelab
	$(BIN)/ruff check .

bench: $(BIN)/lifelab
	$(BIN)/python benchmarks/overhead.py

# docs/learners.md: every learner's config keys from its Param declarations (tests/test_docs.py)
docs: $(BIN)/lifelab
	$(BIN)/python docs/gen_params.py

# requirements.lock: every package at the version pip resolves today from pyproject.toml's
# ranges, installed into a scratch venv and frozen
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --disable-pip-version-check '.[dev]'
	{ echo "# Exact versions CI tests with; regenerate with \`make lock\` (from pyproject.toml)."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^lifelab' ; } \
	  > requirements.lock
	rm -rf .lock-venv build *.egg-info

clean:
	rm -rf $(VENV) lifelab-sweeps
