# Two entry points (README): `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test install install-dev peers lint typecheck bench clean

run: install
	$(BIN)/atmos serve --dev

test: install-dev peers
	scripts/test

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

peers:
	scripts/install-test-peers

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install-dev
	scripts/bench

clean:
	rm -rf $(VENV) state .tmp .pytest_cache .mypy_cache .ruff_cache
