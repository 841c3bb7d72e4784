# Everyday commands. The only set-up is Python 3.11+: the first `make` creates .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up down test lint typecheck unit bench clean install test-faults fuzz

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

up: $(STAMP) ## start PostgreSQL, the broker and all five services (Ctrl-C stops)
	$(BIN)/python deploy/up.py

down: $(STAMP) ## stop what `make up` started
	$(BIN)/python deploy/up.py --down

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck unit ## ruff, mypy and the whole pytest suite on real PostgreSQL and a real broker

test-faults: $(STAMP) ## the fault suite alone (it is also part of `make test`)
	$(BIN)/python -m pytest -q tests/test_faults.py tests/test_platform_faults.py tests/test_rebalance.py tests/test_purchase_to_points.py

fuzz: $(STAMP) ## schemathesis with more examples per operation than `make test` uses
	CX_FUZZ_EXAMPLES=200 $(BIN)/python -m pytest -q tests/test_fuzz_openapi.py

bench: $(STAMP) ## start the system, drive it, print the figures (bench/results.json)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) *.egg-info
