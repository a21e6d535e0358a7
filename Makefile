# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs the pinned requirements, writes the synthetic demo data
#               and runs the main job on it (scripts/run_pipeline.py at demo scale)
#   make test   same environment, runs ruff and the test suite
#   make test-label  creates .venv-label (MONAI Label 0.8.5, pydicom 2.4: requirements-label.txt) and runs
#               tests/label: a real MONAI Label server serving and training the distilled student
#   make serve BUNDLE=distill IMAGES=/path/to/images [PORT=8000]  serves a trained bundle with MONAI Label
#               on 127.0.0.1 (scripts/serve_label.py; the image id is the file name without extension)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR := demo_data/siim

.PHONY: venv label-venv demo demo-data test test-label serve lint benchmark gpu-check clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# MONAI Label needs its own environment: monailabel 0.8.5 pins pydicom < 3 (through pydicom-seg),
# numpy < 2 and jsonschema < 4. The repository itself is not installed there: the tests put it on the
# path, and the server imports `common` from the deployed bundle only.
LABEL_VENV ?= .venv-label
LABEL_PY := $(LABEL_VENV)/bin/python

label-venv: $(LABEL_VENV)/.installed

$(LABEL_VENV)/.installed: requirements-label.txt
	$(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_PY) -m pip install --quiet --upgrade pip
	$(LABEL_PY) -m pip install --quiet -r requirements-label.txt
	touch $@

MULTIDOMAIN_DIR := demo_data/multidomain

demo-data: venv $(DEMO_DIR)/train-rle.csv $(MULTIDOMAIN_DIR)/datalist.json

$(DEMO_DIR)/train-rle.csv:
	$(PY) scripts/make_demo_data.py --out $(DEMO_DIR) --multidomain-out ""

$(MULTIDOMAIN_DIR)/datalist.json:
	$(PY) scripts/make_demo_data.py --out "" --multidomain-out $(MULTIDOMAIN_DIR)

# the whole two-stage protocol at demo scale (about 10 minutes on 2 CPU cores); prints the report's path and
# installs seed 0's models into bundles/*/models, so the bundles' own commands work right after (README)
demo: demo-data
	$(PY) scripts/run_pipeline.py --scale demo --labelled-fraction 0.3 --no-tuning --out runs/demo --install 0

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: venv lint
	$(PY) -m pytest -q

# tests/label has its own pytest.ini (the main suite never collects it). On 2 cores: creating .venv-label
# (8 GB) takes about 2 minutes from the local package index, the tests about 2 minutes.
test-label: label-venv
	$(LABEL_PY) -m pytest -q tests/label

# deploys the bundle (common vendored) into MONAI Label's monaibundle app under runs/label_apps/ and
# becomes the server (Ctrl-C stops it); needs .venv-label only (the script strips PYTHONPATH for the server)
BUNDLE ?= distill
PORT ?= 8000
serve: label-venv
	PYTHONPATH="$(CURDIR)" $(LABEL_PY) scripts/serve_label.py --bundle "$(BUNDLE)" --images "$(IMAGES)" --port "$(PORT)"

benchmark: demo-data
	$(PY) scripts/benchmark.py

# on a CUDA machine (a few minutes on one GPU): every bundle under fp16 and bf16 AMP, torchrun + NCCL over all
# GPUs, GPU benchmark figures; one JSON (runs/gpu_check.json). Without CUDA it says so per item.
gpu-check: demo-data
	$(PY) scripts/gpu_check.py --data demo_data --out runs/gpu_check.json

clean:
	rm -rf $(VENV) $(LABEL_VENV) demo_data runs dist bundles/*/models/*.pt bundles/*/models/*.json bundles/*/models/backup-* bundles/*/cache bundles/*/logs bundles/*/eval
