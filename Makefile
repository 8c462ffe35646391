# The README's two commands: `make demo` (deploy the local lab with the whole runbook) and
# `make test` (lint + the suite). Both make their own .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
UNAME := $(shell uname -s)
# `runbook lab up` writes the lab's deployment params here: an ordinary params file whose
# Mac-side programs are the lab's stand-ins; `make demo` deploys it.
LAB_PARAMS := /var/lib/runbook-lab/params.yaml

.PHONY: demo test lint notebooks system-deps venv bench clean lab-down screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,lab]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(STAMP)

system-deps:
	@scripts/install-system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check runbook tests bench
	$(BIN)/ruff format --check runbook tests bench
	$(BIN)/mypy runbook tests bench
	$(BIN)/python -m runbook.sections.outline check notebooks

# notebooks/ is built from runbook/sections/outline.py: edit that, then run this
notebooks: $(STAMP)
	$(BIN)/python -m runbook.sections.outline write notebooks

test: system-deps $(STAMP) lint
	$(BIN)/python -m pytest -q -ra

# the README's pictures (docs/screenshots/*.png): the browser test takes them, the dashboard's on
# a record of `runbook deploy` of a lab of its own (needs root and chromium, as `make test`)
screenshots: system-deps $(STAMP)
	RUNBOOK_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_browser.py -k "panel_answers or dashboard"
	@ls -l docs/screenshots/*.png

ifeq ($(UNAME),Darwin)
demo: $(STAMP)
	@echo "make demo: no lab on macOS (it needs Linux namespaces); showing the plan for params/cache.yaml instead."
	$(BIN)/runbook plan params/cache.yaml
else
demo: system-deps $(STAMP)
	$(BIN)/runbook lab up --lab lab/lab.yaml --out $(LAB_PARAMS)
	$(BIN)/runbook deploy $(LAB_PARAMS) --yes
	$(BIN)/runbook records
endif

lab-down: $(STAMP)
	$(BIN)/runbook lab down --lab lab/lab.yaml

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
