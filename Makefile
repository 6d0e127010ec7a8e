# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
SC     := $(VENV)/bin/soundception

.PHONY: demo test bench clean-demo

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.dev-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[dev]'
	touch $@

# The demo: synthetic birds -> feature store (local dask cluster) -> summary + PNG -> train -> MAP.
demo: $(VENV)/.dev-installed
	rm -rf demo_data stores/demo.zarr runs/demo
	$(SC) synth demo_data --species 5 --files-per-species 8 --min-seconds 4 --max-seconds 90 --seed 0
	$(SC) featurize demo_data/audio --store stores/demo.zarr --metadata demo_data/labels.csv
	$(SC) inspect stores/demo.zarr
	$(SC) inspect stores/demo.zarr --png sp00/XC000001.wav stores/demo-XC000001.png
	@if [ -f train/cli.py ]; then $(MAKE) --no-print-directory demo-train; fi

demo-train: $(VENV)/.dev-installed
	$(SC) train --store stores/demo.zarr --out runs/demo $(DEMO_TRAIN_ARGS)

test: $(VENV)/.dev-installed
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

bench: $(VENV)/.dev-installed
	$(PY) bench/featurize.py
	$(PY) bench/loader.py
	$(PY) bench/train_step.py
