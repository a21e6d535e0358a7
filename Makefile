# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs the pinned requirements, writes the synthetic demo data
#               and runs the main job on it (scripts/run_pipeline.py at demo scale)
#   make test   same environment, runs ruff and the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR := demo_data/siim

.PHONY: venv demo demo-data test lint benchmark clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

MULTIDOMAIN_DIR := demo_data/multidomain

demo-data: venv $(DEMO_DIR)/train-rle.csv $(MULTIDOMAIN_DIR)/datalist.json

$(DEMO_DIR)/train-rle.csv:
	$(PY) scripts/make_demo_data.py --out $(DEMO_DIR) --multidomain-out ""

$(MULTIDOMAIN_DIR)/datalist.json:
	$(PY) scripts/make_demo_data.py --out "" --multidomain-out $(MULTIDOMAIN_DIR)

# the whole two-stage protocol at demo scale (about 10 minutes on 2 CPU cores); prints the report's path
demo: demo-data
	$(PY) scripts/run_pipeline.py --scale demo --labelled-fraction 0.3 --out runs/demo

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: venv lint
	$(PY) -m pytest -q

benchmark: demo-data
	$(PY) scripts/benchmark.py

clean:
	rm -rf $(VENV) demo_data runs bundles/*/models/*.pt bundles/*/models/*.json bundles/*/cache bundles/*/logs bundles/*/eval
