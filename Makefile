# Lamina: the two commands a newcomer needs are `make demo` and `make test`.
# Each sets everything up itself (virtualenv, install, jar fetch, stack start) from a fresh clone.

# Python 3.11, 3.12 or 3.13: the first of python3.11, python3.12, python3.13 on PATH unless
# PYTHON is given (make test PYTHON=/path/to/python3.12). Each minor version has its own frozen
# constraints file, constraints/py3.X.txt, picked from $(PYTHON)'s version.
PYTHONS := 3.11 3.12 3.13
ifeq ($(origin PYTHON),undefined)
PYTHON := $(or $(firstword $(foreach v,$(PYTHONS),$(if $(shell command -v python$(v) 2>/dev/null),python$(v)))),python3.11)
endif
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
CONSTRAINTS := constraints/py$(PYVER).txt
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help prereqs setup demo test test-unit lint format typecheck stack-up stack-down \
        stack-status bench constraints clean mutate browser

help: ## show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

prereqs: ## check Java 17, Maven and Python 3.11, 3.12 or 3.13 are installed
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11, 3.12 or 3.13 (or run make PYTHON=/path/to/python3.X)"; exit 1; }
	@test -n "$(filter $(PYTHONS),$(PYVER))" || { echo "error: $(PYTHON) is Python $(or $(PYVER),?), but Lamina needs Python 3.11, 3.12 or 3.13 (run make PYTHON=/path/to/python3.X)"; exit 1; }
	@command -v java >/dev/null || { echo "error: java not found: install OpenJDK 17 (apt-get install openjdk-17-jdk-headless)"; exit 1; }
	@java -version 2>&1 | grep -qE 'version "17[."]' || { echo "error: java is not Java 17 (Cassandra 5.0 needs 17): set JAVA_HOME/PATH to a JDK 17"; exit 1; }
	@command -v mvn >/dev/null || { echo "error: mvn not found: install Maven 3.8+ (apt-get install maven); it fetches the service jars once"; exit 1; }

# An existing $(VENV) must be of $(PYTHON)'s version (its packages are pinned for that version).
VENV_CHECK = $(BIN)/python -c 'import sys; sys.exit("%d.%d" % sys.version_info[:2] != "$(PYVER)")' || { \
    echo "error: $(VENV) was made with another Python than $(PYTHON) ($(PYVER)): make clean, or use another VENV=..."; exit 1; }

setup: prereqs $(STAMP) ## create .venv and install Lamina with pinned dependencies
	@$(VENV_CHECK)

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(VENV_CHECK)
	@echo "installing Lamina and its pinned dependencies ($(CONSTRAINTS)) into $(VENV)"
	@$(BIN)/python -m pip install -q --disable-pip-version-check -c $(CONSTRAINTS) -e '.[airflow,dev]'
	@touch $@

demo: setup ## start the local stack and run the demo pipeline (add ARGS=--stop to stop it after)
	@$(BIN)/lamina demo $(ARGS)

test: setup lint browser ## lint, then run every test tier against the real local stack
	$(BIN)/pytest $(PYTEST_ARGS)

# The console's browser tests drive Debian's headless Chromium through its chromedriver.
browser: ## install Debian's chromium and chromium-driver if missing (as root, or via sudo)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian's chromium and chromium-driver (the console's browser tests)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

test-unit: setup ## only the fast tests (no JVM, no services)
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

MUTATE_STAMP := $(VENV)/.installed-mutate

$(MUTATE_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c $(CONSTRAINTS) -e '.[airflow,dev,mutate]'
	@touch $@

mutate: setup $(MUTATE_STAMP) ## mutation testing (slow, not in CI): mutmut on the pure core, then the named mutants on the real stack
	rm -rf mutants
	$(BIN)/mutmut run
	$(BIN)/mutmut export-cicd-stats
	$(BIN)/python -m tests.mutants --mutmut-stats mutants/mutmut-cicd-stats.json \
	    --json mutation-report.json $(ARGS)

lint: setup ## ruff lint + format check, mypy (core and layers), import layers
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: setup ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

stack-up: setup ## start Kafka and Cassandra on 127.0.0.1
	$(BIN)/lamina stack up
stack-down: setup ## stop them
	$(BIN)/lamina stack down
stack-status: setup
	$(BIN)/lamina stack status

constraints: prereqs ## refreeze constraints/py3.X.txt for PYTHON's version from a fresh resolve of setup.cfg
	rm -rf .venv-freeze && $(PYTHON) -m venv .venv-freeze
	.venv-freeze/bin/pip install -q '.[airflow,dev,mutate]'
	{ echo "# Frozen constraints for Python $(PYVER): the whole dependency tree (Airflow included), from"; \
	  echo "# \`pip freeze\` of a venv built from setup.cfg. Regenerate with \`make constraints PYTHON=python$(PYVER)\`."; \
	  .venv-freeze/bin/pip freeze --exclude lamina; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS) && rm -rf .venv-freeze

clean: ## remove the virtualenv (the stack's state and jar cache live outside the tree)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
