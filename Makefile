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

.PHONY: help venv caffe test test-caffe test-project demo

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
