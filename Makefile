# The two commands a newcomer needs: `make run` (the whole system) and `make test` (everything).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
export JOBQ_JWT_SECRET_FILE ?= .jobq/jwt-secret
# uv from PATH, else one installed into .uv: a Debian or Ubuntu python3 refuses `pip install`
# outside a virtual environment (PEP 668), so it goes into one of its own.
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.uv/bin/uv)

.PHONY: install run test lint types bench soak lock clean

$(CURDIR)/.uv/bin/uv:
	@python3 -m venv .uv || { echo "make: python3 cannot make a virtual environment for uv;" \
		"install python3-venv (apt install python3-venv), or uv itself" \
		"(https://docs.astral.sh/uv/getting-started/installation/)" >&2; exit 2; }
	.uv/bin/pip install --quiet "uv==0.13.9"  # as deploy/Dockerfile

$(VENV)/.installed: requirements.lock pyproject.toml sdk/python/pyproject.toml | $(UV)
	$(UV) venv --quiet --allow-existing $(VENV)
	$(UV) pip sync --quiet --python $(PY) --require-hashes requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e . -e sdk/python
	@touch $@

install: $(VENV)/.installed

## Start api, scheduler and 2 workers in the foreground (first run: database, migrations, admin).
run: install
	$(BIN)/jobq init
	$(BIN)/jobq up --workers 2

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: install
	$(BIN)/mypy

## Lint, types and every test (unit, integration, end to end) against real PostgreSQL and RabbitMQ.
test: lint types
	$(BIN)/pytest -q

## Throughput, latency and CPU per job against Celery and Dramatiq on one RabbitMQ (tables; not a test).
bench: install
	$(PY) -m tests.bench $(BENCH_ARGS)

## The fault suite's workload with a fault every minute (default 10 min; not in `make test`).
soak: install
	$(PY) -m tests.chaos.soak $(SOAK_ARGS)

## Re-resolve dependencies and export the hashed locks (uv.lock itself is never committed):
## requirements.lock with every group, and the same resolution without the dev group for the
## image (deploy/requirements.runtime.lock).
EXPORT = $(UV) export --quiet --format requirements-txt --no-emit-project --no-emit-package jobq-client
lock: | $(UV)
	$(UV) lock
	$(EXPORT) --all-groups -o requirements.lock
	$(EXPORT) --no-dev -o deploy/requirements.runtime.lock

clean:
	rm -rf $(VENV) .uv .mypy_cache .ruff_cache .pytest_cache
