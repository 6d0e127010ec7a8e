# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
SC     := $(VENV)/bin/soundception

.PHONY: demo test lint bench browser

# Real bird recordings for bench/codecs.py, from the PyPI wheels that ship them (a registry download, once).
REAL_WHEELS := opensoundscape==0.13.2 hawkears==2.3.0 vocalpy==0.10.3
bench/data/real: | $(VENV)/bin/python
	mkdir -p bench/data/wheels $@
	$(PIP) download -q --no-deps -d bench/data/wheels $(REAL_WHEELS)
	cd bench/data/wheels && for w in *.whl; do unzip -o -j -q $$w '*/sample_data/birds_10s.wav' '*/recordings/CommonYellowthroat.mp3' \
		'*/examples/bl26lb16.wav' '*/examples/bells.wav' '*/examples/samba.wav' '*/examples/simple.wav' \
		'*/examples/flashcam.wav' '*/examples/WhiLbl0010_110411-DC-01.wav' -d ../real 2>/dev/null || true; done

# A small backbone and 3 s crops so the demo trains on 2 CPU cores in a few minutes.
DEMO_TRAIN_ARGS := --backbone mobilenetv3_small_100 --crop-seconds 3 --stage1-steps 20 --stage1-lr 2e-3 \
	--stage1-warmup 5 --stage2-steps 200 --stage2-batch-size 8 --stage2-lr 2e-3 --stage2-warmup 10 \
	--validation-fraction 0.2 --workers 2 --eval-every 100 --checkpoint-every 100

# Fine-tuning the demo model to the site's species: the same network, fewer steps.
DEMO_ADAPT_ARGS := --backbone mobilenetv3_small_100 --crop-seconds 3 --stage1-steps 20 --stage1-lr 2e-3 \
	--stage1-warmup 5 --stage2-steps 40 --stage2-batch-size 8 --stage2-lr 1e-3 --stage2-warmup 5 \
	--validation-fraction 0.2 --workers 2 --eval-every 0 --checkpoint-every 60

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.dev-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[dev]'
	touch $@

# The browser tests (tests/test_review.py) and bench/review.py drive Debian's Chromium through Playwright (never a
# downloaded browser): installed here once, a no-op when it is there; where it cannot be installed those tests skip.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null && echo "installed chromium"; } || \
		echo "chromium is not installed and could not be (apt-get install chromium as root): the browser tests will skip"

# The demo: synthetic birds -> feature store (local dask cluster) -> summary + PNG -> train -> MAP
# -> predictions (tables, run files) -> the run file's MAP -> an attention picture from an audio file
# -> ... -> a review page of the predictions.
demo: $(VENV)/.dev-installed
	rm -rf demo_data stores/demo.zarr stores/demo-site.zarr runs/demo runs/demo-site runs/demo-site-head
	$(SC) synth demo_data --species 5 --files-per-species 12 --min-seconds 4 --max-seconds 90 --seed 0
	$(SC) featurize demo_data/audio --store stores/demo.zarr --metadata demo_data/labels.csv
	$(SC) inspect stores/demo.zarr
	$(SC) inspect stores/demo.zarr --png sp00/XC000001.wav stores/demo-XC000001.png
	$(SC) train --store stores/demo.zarr --out runs/demo $(DEMO_TRAIN_ARGS)
	$(SC) evaluate --checkpoint runs/demo/checkpoints/last.pt --store stores/demo.zarr --out runs/demo/report.json
	$(SC) predict --checkpoint runs/demo/checkpoints/last.pt --store stores/demo.zarr --out runs/demo/predictions \
		--format csv,raven,audacity,birdclef --segments 5
	$(SC) score runs/demo/predictions/birdclef/recordings.txt demo_data/truth.csv
	$(SC) explain --checkpoint runs/demo/checkpoints/last.pt demo_data/audio/sp02/XC000025.wav --out runs/demo/explain.png
	@echo "--- adapting the demo model to a site's own species (3 new ones, 6 recordings each) ---"
	$(SC) synth demo_data/site --species 3 --files-per-species 6 --min-seconds 4 --max-seconds 30 --seed 1 --prefix site
	$(SC) featurize demo_data/site/audio --store stores/demo-site.zarr --metadata demo_data/site/labels.csv \
		--config runs/demo/featurizer_config.json --serial
	$(SC) train --store stores/demo-site.zarr --out runs/demo-site --init-from runs/demo/checkpoints/last.pt $(DEMO_ADAPT_ARGS)
	$(SC) fit-head --checkpoint runs/demo/checkpoints/last.pt --store stores/demo-site.zarr --out runs/demo-site-head
	$(SC) search --embeddings runs/demo-site-head/embeddings.zarr --query site01/XC000007.wav --out runs/demo-site-head/search --top 10
	@echo "--- a page to review the demo's detections: open it in a browser, no server needed ---"
	$(SC) review runs/demo/predictions --no-progress

# Lint and layers: ruff, then import-linter's layers contract (pyproject.toml) on the package as a
# wheel installs it (soundception.featurize, .train, .shared, with imports inside functions counted).
lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	rm -rf build/layers && mkdir -p build/layers
	$(PIP) wheel -q --no-deps -w build/layers/wheel . > build/layers/wheel.log 2>&1 || { cat build/layers/wheel.log; exit 1; }
	$(PIP) install -q --no-deps --no-compile --target build/layers/tree build/layers/wheel/*.whl
	cd build/layers && PYTHONPATH=tree ../../$(VENV)/bin/lint-imports --no-cache ../../pyproject.toml

test: lint browser
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

bench: $(VENV)/.dev-installed bench/data/real browser
	$(PY) bench/codecs.py --out bench/results/codecs.json
	$(PY) bench/featurize.py
	$(PY) bench/loader.py
	$(PY) bench/train_step.py
	$(PY) bench/augment.py
	$(PY) bench/predict.py
	$(PY) bench/localize.py
	$(PY) bench/scale.py
	$(PY) bench/layout.py
	$(PY) bench/long_recording.py --hours 1 10
	$(PY) bench/search.py
	$(PY) bench/head.py
	$(PY) bench/transfer.py
	$(PY) bench/review.py
