# The two commands the README opens with: `make demo` and `make test`.
# Both build (or refresh) the local virtual environment first; running them twice is safe.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medlens-installed
DEMO_DIR ?= demo_out

.PHONY: setup browser demo test test-all bench clean

setup: $(STAMP)

# torch first: `torch==2.13.0` is the CPU build on this disk; an unpinned torch pulls a CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/medlens demo-data $(DEMO_DIR)
	$(VENV)/bin/medlens inspect $(DEMO_DIR)/classification.csv --out $(DEMO_DIR)/card_classification.json
	$(VENV)/bin/medlens split $(DEMO_DIR)/classification.csv --folds 3 --out $(DEMO_DIR)/splits_classification.json
	$(VENV)/bin/medlens inspect $(DEMO_DIR)/segmentation --out $(DEMO_DIR)/card_segmentation.json
	$(VENV)/bin/medlens info $(DEMO_DIR)/dicom/series_001
	$(VENV)/bin/medlens plan $(DEMO_DIR)/classification.csv --time-budget 90s --out $(DEMO_DIR)/plan.yaml
	rm -rf $(DEMO_DIR)/run
	$(VENV)/bin/medlens train $(DEMO_DIR)/classification.csv --plan $(DEMO_DIR)/plan.yaml --out $(DEMO_DIR)/run
	$(VENV)/bin/medlens evaluate $(DEMO_DIR)/run
	$(VENV)/bin/medlens predict $(DEMO_DIR)/run $(DEMO_DIR)/new_studies --out $(DEMO_DIR)/run/new_studies.csv
	$(VENV)/bin/medlens explain $(DEMO_DIR)/run $(DEMO_DIR)/new_studies --out $(DEMO_DIR)/run/explanations
	rm -rf $(DEMO_DIR)/model.bundle
	$(VENV)/bin/medlens export $(DEMO_DIR)/run --out $(DEMO_DIR)/model.bundle
	$(VENV)/bin/medlens predict $(DEMO_DIR)/model.bundle $(DEMO_DIR)/new_studies --backend onnx
	rm -rf $(DEMO_DIR)/seg_run
	$(VENV)/bin/medlens train $(DEMO_DIR)/segmentation --time-budget 60s --out $(DEMO_DIR)/seg_run --no-progress
	$(VENV)/bin/medlens evaluate $(DEMO_DIR)/seg_run
	$(VENV)/bin/medlens predict $(DEMO_DIR)/seg_run $(DEMO_DIR)/new_volumes/lesion_new.nii.gz --out $(DEMO_DIR)/seg_run/new_masks
	$(VENV)/bin/medlens explain $(DEMO_DIR)/seg_run $(DEMO_DIR)/new_volumes/lesion_new.nii.gz --out $(DEMO_DIR)/seg_run/explanations
	@echo "demo: cards and splits in $(DEMO_DIR)/; the classification run (plan, checkpoints, metrics.json,"
	@echo "      metrics.csv, predictions) in $(DEMO_DIR)/run/; the truth for new_studies in $(DEMO_DIR)/new_studies/answers.csv;"
	@echo "      the segmentation run in $(DEMO_DIR)/seg_run/, its mask for new_volumes/lesion_new.nii.gz in"
	@echo "      $(DEMO_DIR)/seg_run/new_masks/ (truth: $(DEMO_DIR)/new_volumes/truth/);"
	@echo "      open $(DEMO_DIR)/run/report.html and $(DEMO_DIR)/seg_run/report.html in a browser; Grad-CAM"
	@echo "      overlays of the new studies in $(DEMO_DIR)/run/explanations/, of the new volume in $(DEMO_DIR)/seg_run/explanations/;"
	@echo "      the deployable bundle in $(DEMO_DIR)/model.bundle: serve it with"
	@echo "      $(VENV)/bin/medlens serve $(DEMO_DIR)/model.bundle   (then open http://127.0.0.1:8000/)"

# The report's browser test drives the system chromium (Debian package; the machine runs as root).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

test: setup browser
	$(PY) -m pytest -q -m "not slow"

test-all: setup browser
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/io.py
	$(PY) benchmarks/medmnist.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
