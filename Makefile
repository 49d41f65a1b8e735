# Sealroom: `make demo` serves a seeded console; `make test` runs the whole suite.
# Both install what is missing (Docker engine, debootstrap, Chromium, the venv, the images)
# and are idempotent: a second run reuses the cached images and wheels.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export SEALROOM_HOME ?= $(CURDIR)/var
export TESTCONTAINERS_RYUK_DISABLED := true
PYTEST_ARGS ?=

.PHONY: demo test bench setup host venv images seed unit lint typecheck clean-containers

demo: setup
	@echo
	@$(BIN)/sealroom demo seed
	@echo
	$(BIN)/sealroom up

test: setup lint typecheck
	SEALROOM_REQUIRE_ENGINE=1 $(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest -p no:cacheprovider tests/unit $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m tests.benchmarks

setup: host images seed

host:
	@bash images/host/ensure-host.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

images: host venv
	$(BIN)/sealroom images build

seed: venv
	@$(BIN)/sealroom init >/dev/null
	@$(BIN)/sealroom demo seed >/dev/null

lint: venv
	$(BIN)/ruff check console sandbox policies audit tests

typecheck: venv
	$(BIN)/mypy

clean-containers:
	docker ps -aq --filter label=sealroom.sandbox | xargs -r docker rm -f
