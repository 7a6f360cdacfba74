# The README's commands. `make test` is what CI runs (through .ci/run).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv venv-run redis-server lint test demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'

# What running agentic needs (the demo): no test, lint or benchmark tools.
venv-run: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[all]'

# The real-Redis tests need redis-server: install it when missing and possible.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || scripts/install-redis.sh

lint: venv
	$(BIN)/ruff check agentic tests bench scripts
	$(BIN)/ruff format --check agentic tests bench scripts
	$(BIN)/mypy

# Three workers (pytest-xdist): the suite mostly waits on processes, leases and
# timeouts, so it runs in well under half the time even on 2 cores.
test: venv redis-server lint
	$(BIN)/pytest -q -p no:cacheprovider --durations=10 -n 3 --dist loadgroup

demo: venv-run
	$(BIN)/agentic demo

bench: venv redis-server
	$(BIN)/python bench/registry.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
