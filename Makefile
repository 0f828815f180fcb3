# Two entry points for a fresh machine (see README "Quick start"):
#   make demo   set everything up, then run the main job
#   make test   set everything up, then run lint, the test suite, the tutorials (fast mode) and the docs build
# Both create (or reuse) a virtual environment in .venv and are idempotent.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.monai_probseg-installed
DEMO_OUT ?= demo_output
PYTEST_WORKERS ?= 2

.PHONY: install demo test lint docs clean

$(STAMP): setup.cfg pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt -e ".[test,all,docs]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m monai.bundle run --config_file bundles/brats_ssn/configs/inference.json --output_dir $(DEMO_OUT)
	$(PY) -m monai_probseg.demo --output_dir $(DEMO_OUT)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

test: $(STAMP)
	$(MAKE) --no-print-directory lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile tests
	OMP_NUM_THREADS=1 MONAI_PROBSEG_FAST=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --nbmake --nbmake-timeout=600 tutorials
	$(MAKE) --no-print-directory docs

clean:
	rm -rf $(VENV) docs/_build $(DEMO_OUT) .pytest_cache .ruff_cache
