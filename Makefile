# FCN on BVLC Caffe: the map of the pipeline. `make help` lists the targets.
#
# Set-up on a fresh machine is two commands: `make demo` (the whole method on the
# embedded toy set, CPU) and `make test`. Both create the virtualenv and build Caffe
# on first use; the Caffe build is cached outside the repository (see caffe-build/).

SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.requirements-installed
# Glog's start-up chatter (every layer's set-up) is off unless asked for.
export GLOG_minloglevel ?= 2

.PHONY: help venv caffe test test-caffe test-project

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9%_.-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{printf "  %-24s %s\n", $$1, $$2}'

# ---- foundation --------------------------------------------------------------------

$(VENV_STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -c 'import pathlib, sysconfig; \
		pathlib.Path(sysconfig.get_paths()["purelib"], "fcn-project.pth").write_text("$(CURDIR)\n")'
	touch $@

venv: $(VENV_STAMP) ## the virtualenv (.venv) with pinned requirements

caffe: $(VENV_STAMP) ## build BVLC Caffe from source (cached; CAFFE_SRC=tree|tarball)
	$(PY) caffe-build/build.py

test-caffe: caffe ## Caffe's own pycaffe test suite against the build
	$(PY) caffe-build/build.py --test

test-project: caffe ## the project's own tests
	$(PY) -m pytest tests

test: test-caffe test-project ## all tests (what CI runs)

# ---- gpu ---------------------------------------------------------------------------
# The CUDA build of Caffe that the Dockerfile makes, checked on a machine without a GPU:
# the installed nvcc, cuBLAS/cuRAND/NCCL from NVIDIA's pip wheels, its own build cache (the
# team's .venv and CPU build are untouched), then pycaffe's test suite in CPU mode and a
# look at what the binary holds. CUDA 13's nvcc no longer targets Volta (sm_70); the
# image's CUDA 12 build does.
GPU_CACHE ?= $(HOME)/.cache/fcn-caffe-gpu
GPU_ARCHS ?= 75 80 86 89 90
GPU_WHEELS := nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-nccl-cu13==2.27.7
GPU_WHEELS_DIR := $(GPU_CACHE)/wheels-$(shell printf '%s' '$(GPU_WHEELS)' | sha256sum | cut -c1-12)
GPU_BUILD = $(PY) caffe-build/build.py --no-pth --cache $(GPU_CACHE) --cuda "$(GPU_ARCHS)" \
	--cuda-libs $(GPU_WHEELS_DIR)/nvidia/cu13 --cuda-libs $(GPU_WHEELS_DIR)/nvidia/nccl

.PHONY: caffe-gpu-check

$(GPU_WHEELS_DIR)/.installed: | $(VENV_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps \
		--target $(GPU_WHEELS_DIR) $(GPU_WHEELS)
	touch $@

caffe-gpu-check: $(GPU_WHEELS_DIR)/.installed ## build Caffe for CUDA GPUs here (no GPU needed) and test it
	$(GPU_BUILD) --test
	$(GPU_BUILD) --info | $(PY) -c 'import json, sys; print(json.load(sys.stdin)["pythonpath"])' \
		> $(GPU_CACHE)/pythonpath
	PYTHONPATH=$$(cat $(GPU_CACHE)/pythonpath) $(PY) -c 'import caffe; \
		assert caffe.has_nccl(), "this CUDA build lacks NCCL"; print("pycaffe:", caffe.__file__)'
