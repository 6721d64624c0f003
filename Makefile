# pgcast developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
TOOLS := .tools
POETRY_HOME := $(TOOLS)/poetry
POETRY := $(POETRY_HOME)/bin/poetry
VENV := .venv
RUN := $(VENV)/bin
export POETRY_VIRTUALENVS_IN_PROJECT := true
export POETRY_VIRTUALENVS_CREATE := true
export POETRY_CACHE_DIR := $(CURDIR)/$(TOOLS)/cache
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup run dev test test_reload check soak bench bench-peers clean

help: ## List the targets
	@grep -E '^[a-z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(POETRY):
	$(PYTHON) -m venv $(POETRY_HOME)
	$(POETRY_HOME)/bin/pip install --quiet 'poetry>=2.0,<3'

$(VENV)/.installed: $(POETRY) pyproject.toml poetry.lock
	$(POETRY) install --no-interaction --quiet
	touch $@

setup: $(VENV)/.installed ## Install Poetry (into .tools/) and the project (into .venv/)

run: setup ## Start embedded Postgres (unless DATABASE_URL is set), migrate, serve on HOST:PORT
	$(RUN)/pgcast serve

dev: setup ## Like run, with auto-reload on code changes
	$(RUN)/pgcast serve --reload

# Every server, CLI and worker process of a test run imports the same modules: keep their
# bytecode (outside the tree, in .venv), or each process compiles them again, about a
# second of CPU per process.
PYCACHE := $(CURDIR)/$(VENV)/pycache
# The suite waits on servers, databases and timers more than it computes (one worker per
# core kept about one of two cores busy), so it runs one worker more than there are cores.
# Whole modules go to a worker (a module's shared server starts once), in the order
# backend/conftest.py gives them: modules that spawn processes first, so the run ends on
# quick unit tests instead of one worker finishing a long scenario while the others idle.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print((os.cpu_count() or 1) + 1)')

test: setup ## The whole suite (unit + integrated + external), in parallel; the 20 slowest listed
	PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(PYCACHE) $(RUN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

soak: setup ## Fault-injection scenarios at full size, one at a time (~20 min); see docs/reliability.md
	PGCAST_SOAK=1 $(RUN)/pytest backend/faults -m external -p no:xdist -v $(ARGS)

bench: setup ## Benchmarks with baselines (< 5 min; ARGS=--quick for a smoke run, ARGS=--peers for the peers); see docs/performance.md
	$(RUN)/python -m bench $(ARGS)

bench-peers: setup ## pgcast next to Nchan, broadcaster, pgqueuer, procrastinate (~15 min; installs them into .tools/peers/)
	$(RUN)/python -m bench --peers $(ARGS)

test_reload: setup ## Re-run the tests whenever a file changes
	$(RUN)/ptw . -- -n auto

check: setup ## Lint, format check, strict typing, layer contract, models match migrations
	$(RUN)/ruff check .
	$(RUN)/ruff format --check .
	$(RUN)/mypy
	$(RUN)/lint-imports
	$(RUN)/pgcast migrate --check

clean: ## Remove the virtualenv, tools and local data
	rm -rf $(VENV) $(TOOLS) .data
