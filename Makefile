# Set-up, tests and demo. `make test` and `make demo` set up the stack's venv first.
#
# Two supported stacks (README, "Stacks"): STACK=maintained (the default; the OneDL forks
# of MMEngine and MMSegmentation with mmcv-lite, nothing compiled but cals-seg's own
# kernels) and STACK=upstream (mmsegmentation 1.2.2, mmengine 0.10.7, mmcv 2.1.0 compiled
# with its ops). Each has its own venv, so `make test STACK=upstream` leaves .venv alone.
PYTHON ?= python3.11
STACK ?= maintained
ifeq ($(STACK),maintained)
VENV ?= .venv
else ifeq ($(STACK),upstream)
VENV ?= .venv-upstream
else
$(error STACK is 'maintained' (the default) or 'upstream', not '$(STACK)')
endif
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# One stamp per stack: a venv whose stamp is not this stack's (an older .venv of the
# upstream stack, a half-finished set-up) is made anew rather than mixed.
STAMP := $(VENV)/.installed-$(STACK)

.PHONY: setup test demo benchmark bench clean-venv

setup: $(STAMP)

# torch first and alone (the CPU build), then the stack, last cals-seg itself, whose CPU
# kernels (cals_seg/ops/csrc) compile against the installed torch (hence
# --no-build-isolation). Upstream: mmcv 2.1.0 is compiled against torch before the rest
# (its setup.py imports torch and pkg_resources, hence --no-build-isolation and
# setuptools<81). Maintained: mmcv-lite goes in with --no-deps (requirements/
# maintained-no-deps.txt says why).
$(STAMP): requirements/common.txt requirements/$(STACK).txt $(wildcard requirements/$(STACK)-no-deps.txt) \
		setup.py Makefile $(wildcard cals_seg/ops/csrc/*.cpp cals_seg/ops/csrc/*.h)
	test -f $(STAMP) || rm -rf $(VENV)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=24" wheel
	$(PIP) install torch==2.13.0 "setuptools>=77.0.3,<81"
ifeq ($(STACK),upstream)
	MMCV_WITH_OPS=1 MAX_JOBS=2 $(PIP) install --no-build-isolation mmcv==2.1.0
endif
	$(PIP) install -r requirements/$(STACK).txt
ifeq ($(STACK),maintained)
	$(PIP) install --no-deps -r requirements/maintained-no-deps.txt
endif
	MAX_JOBS=2 $(PIP) install --no-build-isolation --no-deps -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) tools/demo.py

# The calibration study (tools/calib_study.py) on the two demo base configs: every
# method at its defaults and with its main knob tuned on the selection part's NLL
# (tuning seeds 100 101), 3 seeds, the post-hoc calibrators on CE and CALS, the 15
# corruptions at severities 3 and 5 and the shifted domain; the same again
# fine-tuned for 150 iterations from a CE checkpoint of each config (trained first,
# on seed 1000, as a team's own), with how the fine-tuned rows rank the methods
# against the full ones; ensembles of each method's seeds and flip TTA of CE and of
# the lowest-ECE method, from the kept checkpoints; two runs at a time. Finished
# runs are reused from docs/results (keyed by config, options, checkpoint, code,
# libraries and data), so it resumes; writes docs/results.md and docs/figures/.
BENCHMARK_CONFIGS := configs/demo/deeplabv3_r18tiny_1500it_demo-voc_ce.py \
	configs/demo/pspnet_r18tiny_1500it_demo-voc_ce.py
BENCHMARK_OPTIONS := train_cfg.val_interval=1500 default_hooks.checkpoint.interval=1500
BENCHMARK_START = work_dirs/benchmark/start/$(basename $(notdir $(1)))
benchmark: setup
	test -d data/cals_demo/voc || $(PY) tools/make_demo_data.py
	test -d data/cals_demo/voc_shifted || $(PY) tools/make_demo_data.py --domain shifted
	$(foreach config,$(BENCHMARK_CONFIGS),(test -f $(call BENCHMARK_START,$(config))/iter_1500.pth || \
		$(PY) tools/train.py $(config) --work-dir $(call BENCHMARK_START,$(config)) --resume \
		--cfg-options $(BENCHMARK_OPTIONS) randomness.seed=1000 > /dev/null) &&) true
	$(PY) tools/calib_study.py $(BENCHMARK_CONFIGS) --seeds 0 1 2 --tune --tuning-seeds 100 101 \
		--from $(foreach config,$(BENCHMARK_CONFIGS),$(call BENCHMARK_START,$(config))/iter_1500.pth) \
		--finetune-iters 150 --full --free-rows --jobs 2 \
		--domain-root data/cals_demo/voc_shifted/VOCdevkit/VOC2012 \
		--cfg-options $(BENCHMARK_OPTIONS) \
		--work-dir work_dirs/benchmark --results-dir docs/results --out docs/results.md \
		--title "Calibration methods on the demo data: defaults, tuned, post-hoc, under shift, fine-tuned"

# Cost of CALS and of the metric, as ratios measured side by side (docs/costs.md).
bench: setup
	cd bench && ../$(PY) run_all.py

clean-venv:
	rm -rf .venv .venv-upstream build cals_seg/ops/_kernels*.so
