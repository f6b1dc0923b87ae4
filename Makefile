# The two commands of the README's Quick start: `make demo` and `make test`.
# Both build a virtualenv in .venv first, so a fresh clone needs only python3.

VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,peers,bench]'
	touch $@

demo: $(STAMP)
	$(BIN)/roost serve --demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples fuzzing
	$(BIN)/ruff format --check src tests bench examples fuzzing
	$(BIN)/mypy

test: $(STAMP) lint
	bash scripts/install-system-deps.sh
	$(BIN)/python -m pytest
