# Set-up, tests and demo. `make test` and `make demo` set up .venv first when needed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup test demo benchmark bench clean-venv

setup: $(STAMP)

# torch first (the CPU build), then mmcv compiled against it (its setup.py imports
# torch and pkg_resources, hence --no-build-isolation and setuptools<81), then the rest;
# last cals-seg itself, whose CPU kernels (cals_seg/ops/csrc) compile against torch too.
$(STAMP): requirements.txt setup.py $(wildcard cals_seg/ops/csrc/*.cpp cals_seg/ops/csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=24" wheel
	$(PIP) install torch==2.13.0 "setuptools>=77.0.3,<81"
	MMCV_WITH_OPS=1 MAX_JOBS=2 $(PIP) install --no-build-isolation mmcv==2.1.0
	$(PIP) install -r requirements.txt
	MAX_JOBS=2 $(PIP) install --no-build-isolation --no-deps -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) tools/demo.py

# Every method x both tiny models x 3 seeds on the over-confidence regime of the demo
# data, two runs at a time; writes docs/results.md and docs/figures/.
benchmark: setup
	$(PY) tools/benchmark_methods.py

# Cost of CALS and of the metric, as ratios measured side by side (docs/costs.md).
bench: setup
	cd bench && ../$(PY) run_all.py

clean-venv:
	rm -rf $(VENV) build cals_seg/ops/_kernels*.so
