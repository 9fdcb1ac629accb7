# The two commands the README opens with: `make demo` and `make test`.
# Both build (or refresh) the local virtual environment first; running them twice is safe.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medlens-installed
DEMO_DIR ?= demo_out
# Every package of `.[dev]`, pinned exactly (`make lock` regenerates it from pyproject.toml).
LOCK := requirements/lock.txt
# The CPU build on this disk (/opt/wheels); an unpinned torch pulls a CUDA build of several GB.
TORCH := torch==2.13.0
# pip itself comes from the lock too, so two machines resolve and install alike.
PIP_PIN := $(shell grep -E '^pip==' $(LOCK) 2>/dev/null || echo pip)
FAST_TESTS := not slow and not realdata and not browser and not e2e

.PHONY: setup lock browser pacs viewer demo test test-all test-adversarial check lint docs bench clean

# The 3D viewer (NiiVue, npm package pinned in viewer/package-lock.json) is copied into the package, so the
# service and the reports serve it themselves (no CDN at run time).
VIEWER_JS := src/medlens/report/static/niivue.umd.js

setup: $(STAMP) viewer

# torch first, with pip and the exact pin (uv/poetry would not see the local CPU build), then the lock,
# then medlens itself without dependencies (the lock has them all) and without build isolation (the
# lock's setuptools builds it, nothing is fetched). `pip check` fails if pyproject.toml asks for
# something the lock lacks: run `make lock`.
$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(PIP_PIN)"
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# Regenerate $(LOCK) after changing dependencies in pyproject.toml: keeps every pin that still fits;
# `make lock LOCK_ARGS=--upgrade` (or `LOCK_ARGS="--upgrade-package NAME"`) moves pins to the newest
# allowed releases. Run it on a machine that has the local torch CPU wheel: torch resolves to
# 2.13.0+cpu there (its CPU dependencies, no nvidia-* packages). The self-reference `medlens @ file://`
# (dev pulls in medlens[deploy,docs]) is dropped: `make setup` installs medlens itself.
define LOCK_HEADER
# Exact versions of every package `pip install -e ".[dev]"` needs (Python 3.11, Linux x86_64),
# torch's CPU build included. `make setup` installs $(TORCH) first (pip, local CPU wheel), then
# `pip install -r $(LOCK)`, then `pip install --no-deps --no-build-isolation -e .`.
#
# Do not edit by hand. To regenerate after changing dependencies in pyproject.toml:
#     make lock                      # keeps the pins that still satisfy pyproject.toml
#     make lock LOCK_ARGS=--upgrade  # newest allowed release of everything
# (pip-compile from pip-tools: --extra dev --strip-extras --allow-unsafe, torch constrained to $(TORCH)).
endef
export LOCK_HEADER

lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(VENV)/bin/pip-compile || $(PY) -m pip install -q "$(PIP_PIN)" $$(grep -E '^pip-tools==' $(LOCK) 2>/dev/null || echo pip-tools)
	mkdir -p $(dir $(LOCK))
	echo "$(TORCH)" > $(VENV)/torch-constraint.txt
	test ! -f $(LOCK) || cp $(LOCK) $(LOCK).new  # pip-compile keeps the pins it finds in its output file
	$(VENV)/bin/pip-compile --quiet --no-header --extra dev --strip-extras --allow-unsafe --no-emit-index-url \
	    --no-emit-find-links -c $(VENV)/torch-constraint.txt $(LOCK_ARGS) -o $(LOCK).new pyproject.toml
	{ printf '%s\n\n' "$$LOCK_HEADER"; sed -e '/^medlens @ /,/^[^ ]/{/^medlens @ /d;/^    #/d;}' \
	    -e 's|-c .*torch-constraint.txt|-c $(TORCH) (Makefile)|' $(LOCK).new; } > $(LOCK)
	rm -f $(LOCK).new

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
	$(VENV)/bin/medlens predict $(DEMO_DIR)/seg_run $(DEMO_DIR)/new_dicom/lesion_series --dicom seg,rtstruct,sr --out $(DEMO_DIR)/seg_run/new_dicom
	@echo "demo: cards and splits in $(DEMO_DIR)/; the classification run (plan, checkpoints, metrics.json,"
	@echo "      metrics.csv, predictions) in $(DEMO_DIR)/run/; the truth for new_studies in $(DEMO_DIR)/new_studies/answers.csv;"
	@echo "      the segmentation run in $(DEMO_DIR)/seg_run/, its mask for new_volumes/lesion_new.nii.gz in"
	@echo "      $(DEMO_DIR)/seg_run/new_masks/ (truth: $(DEMO_DIR)/new_volumes/truth/); its DICOM SEG, RTSTRUCT and"
	@echo "      structured report for the DICOM series new_dicom/lesion_series in $(DEMO_DIR)/seg_run/new_dicom/;"
	@echo "      open $(DEMO_DIR)/run/report.html and $(DEMO_DIR)/seg_run/report.html in a browser; Grad-CAM"
	@echo "      overlays of the new studies in $(DEMO_DIR)/run/explanations/, of the new volume in $(DEMO_DIR)/seg_run/explanations/;"
	@echo "      the deployable bundle in $(DEMO_DIR)/model.bundle: serve it with"
	@echo "      $(VENV)/bin/medlens serve $(DEMO_DIR)/model.bundle   (then open http://127.0.0.1:8000/)"

viewer: $(VIEWER_JS)

$(VIEWER_JS): viewer/package.json viewer/package-lock.json
	cd viewer && npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(dir $(VIEWER_JS))
	cp viewer/node_modules/@niivue/niivue/dist/niivue.umd.js $(VIEWER_JS)

# A real PACS for the DICOM network tests: Orthanc with its DICOMweb plugin (Debian packages; the tests start
# their own instance on free localhost ports, never the system service).
pacs:
	@command -v Orthanc >/dev/null 2>&1 && test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so || \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null)

# The report's browser test drives the system chromium (Debian package; the machine runs as root).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# What CI runs (.ci/run): lint, the import contracts, the documentation build, then every test but the slow
# ones (real-data tests included; they skip when ../shared/datasets is absent).
test: setup browser pacs lint docs
	$(PY) -m pytest -q -m "not slow"

test-all: setup browser pacs
	$(PY) -m pytest -q

# The whole adversarial corpus (458 hostile files) against the CLI and a real service; make test runs
# one case per class, CI runs this too (.ci/run).
test-adversarial: setup
	$(PY) -m pytest -q -m slow tests/adversarial

# Lint (ruff, configured in pyproject.toml), import contracts (import-linter, [tool.importlinter] in
# pyproject.toml) and the fast unit tests: no training runs, no browser, no shared datasets.
check: lint
	$(PY) -m pytest -q -m "$(FAST_TESTS)"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks docs/hooks
	$(VENV)/bin/lint-imports

# The documentation site (mkdocs.yml, docs/) into site/; --strict turns every warning into an error.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

bench: setup
	$(PY) benchmarks/io.py
	$(PY) benchmarks/medmnist.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache site
