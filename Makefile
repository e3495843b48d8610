# The two commands a new user runs: `make demo` and `make test`.
# Both set up what they need: .venv with the project and its test extra,
# and the Debian packages (scripts/system-deps.sh).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MPY_OUT := build/mpy
PYTEST_WORKERS ?= 2

.PHONY: test demo bench setup system firmware test-cpython test-micropython clean

setup: $(STAMP) system

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

system:
	@scripts/system-deps.sh

# Compile every firmware module with mpy-cross; fails on the first that does not compile.
firmware: $(STAMP)
	$(BIN)/metergate firmware build --out $(MPY_OUT)

test-cpython: $(STAMP) system
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q tests $(PYTEST_ARGS)

test-micropython: firmware
	$(BIN)/micropython tests/firmware/mpy_runner.py $(MPY_OUT) tests/firmware

test: setup
	@$(MAKE) --no-print-directory firmware
	@$(MAKE) --no-print-directory test-micropython
	@$(MAKE) --no-print-directory test-cpython

demo: setup
	$(BIN)/metergate demo

bench: setup firmware
	$(BIN)/python -m bench

clean:
	rm -rf build .pytest_cache
