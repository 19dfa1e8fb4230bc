# Two commands for a new user: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: venv demo test test-unit test-fast test-db test-workflow test-e2e test-contract lint bench up \
        check-install clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

demo: venv            ## the whole product in a couple of minutes, on free ports
	$(BIN)/dunning demo

test: venv            ## the whole test suite (SQLite always; PostgreSQL when reachable)
	$(BIN)/pytest

# One tier at a time (tests/<tier>); each runs alone. PYTEST_ARGS="-x -k name" narrows it.
test-unit: venv       ## pure Python, no server or database: seconds
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-fast: venv       ## the quick loop: unit and contract (replay, compose, layers)
	$(BIN)/pytest tests/unit tests/contract $(PYTEST_ARGS)

test-db: venv         ## services on SQLite and PostgreSQL
	$(BIN)/pytest tests/db $(PYTEST_ARGS)

test-workflow: venv   ## the workflow under time skipping (scripted and real activities)
	$(BIN)/pytest tests/workflow $(PYTEST_ARGS)

test-e2e: venv        ## dev server, Plivo fake, SMTP sink, crash, CLI
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

test-contract: venv   ## recorded histories replay, compose file, architecture rules
	$(BIN)/pytest tests/contract $(PYTEST_ARGS)

lint: venv            ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy .

bench: venv           ## benchmarks that print figures (BENCH_ARGS="--quick" for a short run)
	$(BIN)/python -m bench $(BENCH_ARGS)

up: venv              ## dev server, migrations, worker and webhook server until Ctrl-C
	$(BIN)/dunning up

check-install:        ## `pip install .` (not editable, no dev extras) in a fresh venv: commands and the demo work
	rm -rf build/check-venv
	$(PYTHON) -m venv build/check-venv
	build/check-venv/bin/pip install -q .
	cd build && DUNNING_DATA_DIR=$$(mktemp -d) check-venv/bin/dunning db upgrade
	build/check-venv/bin/temporal --version
	build/check-venv/bin/dunning --help > /dev/null
	cd build && check-venv/bin/python -c 'import dunning.cli.demo, worker, starter'
	cd build && check-venv/bin/dunning demo --smoke --json > /dev/null

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
