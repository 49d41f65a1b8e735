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

.PHONY: demo test bench setup host venv images seed unit lint typecheck clean-containers docs-images

demo: setup
	@echo
	@$(BIN)/sealroom demo seed
	@echo
	$(BIN)/sealroom up

test: setup lint typecheck
	SEALROOM_REQUIRE_ENGINE=1 $(BIN)/pytest -p no:cacheprovider --durations=25 $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest -p no:cacheprovider tests/unit $(PYTEST_ARGS)

# The pictures in docs/img come from the browser tests that take them; a normal run writes
# them only to its temporary folders (tests/browser/screenshots.py).
DOCS_IMAGE_TESTS := tests/browser/test_engineer_flow.py::test_engineer_trains_the_example_and_sees_the_outbox \
	tests/browser/test_policy_flow.py tests/browser/test_auditor_flow.py \
	tests/browser/test_dataset_catalog_flow.py \
	tests/browser/test_policy_editor.py::test_a_bad_value_is_marked_on_its_line_and_the_dry_run_shows_the_diff \
	tests/browser/test_oversight_flow.py

docs-images: setup
	@out=$$(mktemp -d) && trap 'rm -rf "$$out"' EXIT && \
	SEALROOM_SCREENSHOT_DIR=$$out SEALROOM_REQUIRE_ENGINE=1 \
		$(BIN)/pytest -p no:cacheprovider $(DOCS_IMAGE_TESTS) $(PYTEST_ARGS) && \
	cp -v "$$out"/*.png docs/img/

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
