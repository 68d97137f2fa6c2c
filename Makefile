# inactive_users: build / test tooling.
#
#   make venv         create .venv and install requirements-dev.txt (pinned by constraints.txt) + `-e .`
#   make browser      install Debian's chromium + chromium-driver for the browser test (root; no-op when present)
#   make lint         ruff check + ruff format --check
#   make typecheck    mypy
#   make test         venv, lint, typecheck, then pytest
#   make test-compat  the compat tests (pytest -m compat) on each older Airflow minor, one venv each
#   make dist         build the sdist and wheel into dist/ (PEP 517, uv build)
#   make demo         run the local demo (python -m devstack.demo)
#   make ui           the demo's stage in a local Airflow UI until Ctrl-C (python -m devstack.ui)
#   make bench        run every bench/bench_*.py
#   make constraints  re-resolve constraints.txt from requirements-dev.txt (UPGRADE=1 to bump everything)
#   make constraints-compat  re-resolve constraints/airflow-<minor>.txt (UPGRADE=1 to bump everything)
#   make clean        remove .venv and caches

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
UV_VERSION := 0.13.9
VENV := .venv
VPY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_STAMP := $(VENV)/.uv-$(UV_VERSION)
STAMP := $(VENV)/.installed
REQUIREMENTS := requirements.txt requirements-dev.txt constraints.txt pyproject.toml $(wildcard setup.cfg)

# Lint only the directories that exist (some arrive in later issues).
LINT_PATHS := $(wildcard plugins dags devstack tests bench)
# Tests run in three pytest-xdist workers (more than the 2 cores: the live Airflow, demo and DAG-run
# tests spend much of their time waiting on child processes): each worker has its own Airflow home, moto server and
# PostgreSQL templates, and every server picks a free port. PYTEST_ARGS='-n 0' runs them serially.
# The installed-wheel test (a fresh venv and a live Airflow, ~90 s) runs in make test-compat, on every
# minor, so that make test stays within its 15 minutes.
PYTEST_ARGS ?= -n 3 --durations=15 -m "not installed_wheel"
# make test-compat: the older Airflow minors, each in .venv-compat/<minor> pinned by
# constraints/airflow-<minor>.txt; there only the tests marked "compat" run, on the newest PostgreSQL.
COMPAT_MINORS := 3.1 3.2
COMPAT_DIR := .venv-compat
COMPAT_STAMPS := $(COMPAT_MINORS:%=$(COMPAT_DIR)/%/.installed)
COMPAT_PYTEST_ARGS ?= -n 3 --durations=10
# the files with tests marked "compat" (tests/test_package.py checks the list is complete)
COMPAT_TESTS := tests/test_package.py tests/test_dagbag.py tests/test_dag_e2e.py tests/test_live_approval.py \
	tests/test_status_page.py tests/test_installed_wheel.py

export UV_NO_PROGRESS := 1

.PHONY: help venv browser lint typecheck test test-compat dist demo ui bench constraints constraints-compat clean

help:
	@sed -n 's/^#   \(make \)/\1/p' $(firstword $(MAKEFILE_LIST))

# --- virtualenv -------------------------------------------------------------

$(UV_STAMP):
	@echo "==> bootstrapping $(VENV) with $(PYTHON) and uv==$(UV_VERSION)"
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 required, got " + sys.version)'
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	rm -f $(VENV)/.uv-*
	touch $@

$(STAMP): $(UV_STAMP) $(REQUIREMENTS)
	@echo "==> installing requirements-dev.txt (constrained by constraints.txt) into $(VENV)"
	$(UV) pip install --python $(VPY) -r requirements-dev.txt -c constraints.txt
	@echo "==> installing inactive-users in editable mode (registers airflow.plugins entry point)"
	$(UV) pip install --python $(VPY) --no-deps -e .
	@echo "==> checking installed dependencies"
	$(UV) pip check --python $(VPY)
	touch $@

venv: $(STAMP)
	@echo "==> $(VENV) is up to date"

# The status page's browser test drives Debian's chromium through chromium-driver (Selenium).
# Installed where missing when run as root on Debian; otherwise the test is skipped, saying why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "==> chromium and chromedriver are installed"; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "==> chromium / chromium-driver missing (not root, or not Debian): the browser test will be skipped;" \
			"install them with: apt-get install chromium chromium-driver"; \
	else \
		echo "==> apt-get install chromium chromium-driver (for the browser test)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver >/dev/null; \
	fi

# --- quality gates ----------------------------------------------------------

lint: venv
	@echo "==> ruff check $(LINT_PATHS)"
	$(VENV)/bin/ruff check $(LINT_PATHS)
	@echo "==> ruff format --check $(LINT_PATHS)"
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

typecheck: venv
	@echo "==> mypy (config in pyproject.toml)"
	$(VENV)/bin/mypy

test: venv browser lint typecheck
	@echo "==> pytest $(PYTEST_ARGS)"
	$(VPY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# One venv per older Airflow minor: Python 3.11, its constraints file, the checkout in editable mode.
$(COMPAT_DIR)/%/.installed: $(UV_STAMP) constraints/airflow-%.in constraints/airflow-%.txt pyproject.toml
	@echo "==> $(COMPAT_DIR)/$*: Airflow $* (constraints/airflow-$*.txt)"
	rm -rf $(COMPAT_DIR)/$*
	$(PYTHON) -m venv $(COMPAT_DIR)/$*
	$(UV) pip install --python $(COMPAT_DIR)/$*/bin/python \
		-r constraints/airflow-$*.in -c constraints/airflow-$*.txt
	$(UV) pip install --python $(COMPAT_DIR)/$*/bin/python --no-deps -e .
	$(UV) pip check --python $(COMPAT_DIR)/$*/bin/python
	touch $@

test-compat: venv $(COMPAT_STAMPS)
	@for minor in $(COMPAT_MINORS); do \
		echo "==> pytest -m compat on Airflow $$minor ($(COMPAT_DIR)/$$minor) $(COMPAT_PYTEST_ARGS)"; \
		$(COMPAT_DIR)/$$minor/bin/python -m pytest -p no:cacheprovider -m compat --pg-newest-only \
			$(COMPAT_PYTEST_ARGS) $(COMPAT_TESTS) || exit $$?; \
	done
	@echo "==> pytest -m installed_wheel on the pinned Airflow ($(VENV))"
	$(VPY) -m pytest -p no:cacheprovider -m installed_wheel --pg-newest-only tests/test_installed_wheel.py

# --- the package ------------------------------------------------------------

dist: $(UV_STAMP)
	@echo "==> uv build: sdist and wheel into dist/"
	rm -rf dist
	$(UV) build --python $(VPY) --out-dir dist
	@ls -1 dist

# --- running things ---------------------------------------------------------

demo: venv
	@echo "==> python -m devstack.demo"
	$(VPY) -m devstack.demo

ui: venv
	@echo "==> python -m devstack.ui"
	$(VPY) -m devstack.ui

bench: venv
	@files="$(sort $(wildcard bench/bench_*.py))"; \
	if [ -z "$$files" ]; then echo "==> no bench/bench_*.py found"; exit 0; fi; \
	for f in $$files; do \
		echo "==> $(VPY) $$f"; \
		PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(VPY) "$$f" || exit $$?; \
	done

# --- dependency management --------------------------------------------------

define CONSTRAINTS_HEADER
# constraints.txt: the full, resolved dependency set for this project (runtime + dev).
#
# Airflow's official constraints files are not reachable from CI, so we pin the
# top-level packages in requirements*.txt and commit the resolution here.
# Used as:  uv pip install -r requirements-dev.txt -c constraints.txt   (see `make venv`)
#
# DO NOT EDIT BY HAND. Regenerate with:
#     make constraints              # keep existing pins where possible
#     make constraints UPGRADE=1    # re-resolve everything to the newest allowed versions
# (runs: uv pip compile requirements-dev.txt --python-version 3.11 --python-platform linux)
#
endef
export CONSTRAINTS_HEADER

constraints: $(UV_STAMP)
	@echo "==> resolving requirements-dev.txt -> constraints.txt"
	$(UV) pip compile requirements-dev.txt \
		--python-version 3.11 --python-platform linux $(if $(UPGRADE),--upgrade) \
		--custom-compile-command "make constraints" -o constraints.txt >/dev/null
	@# uv rewrites the whole file (keeping old pins as preferences); prepend our header.
	@{ echo "$$CONSTRAINTS_HEADER"; cat constraints.txt; } > constraints.txt.tmp
	@mv constraints.txt.tmp constraints.txt
	@echo "==> constraints.txt updated; run 'make venv' to apply"

# Each older minor's set, resolved from its .in file preferring the pins already in its .txt
# (first seeded from constraints.txt), so the minors share make test's versions where they can.
constraints-compat: $(UV_STAMP)
	@for minor in $(COMPAT_MINORS); do \
		out=constraints/airflow-$$minor.txt; \
		test -f $$out || grep -v '^ *#' constraints.txt > $$out; \
		echo "==> resolving constraints/airflow-$$minor.in -> $$out"; \
		$(UV) pip compile constraints/airflow-$$minor.in \
			--python-version 3.11 --python-platform linux $(if $(UPGRADE),--upgrade) \
			--custom-compile-command "make constraints-compat" -o $$out >/dev/null || exit $$?; \
	done

# --- housekeeping -----------------------------------------------------------

clean:
	@echo "==> removing $(VENV), build artifacts and caches"
	rm -rf $(VENV) $(COMPAT_DIR) build dist plugins/*.egg-info *.egg-info \
		.mypy_cache .ruff_cache .pytest_cache .hypothesis .airflow-test
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
