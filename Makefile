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
# Caffe's OpenMP threads give their core back after ~30 us of waiting (solve/caffe_env.py,
# which the tools set too): for the C++ suite and anything else started here.
export GOMP_SPINCOUNT ?= 1000

.PHONY: help venv caffe test test-caffe test-caffe-cpp test-project

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

caffe: $(VENV_STAMP) ## build BVLC Caffe from source (cached; CAFFE_SRC=tree|tarball, BLAS=openblas|openblas-pthread|blis)
	$(PY) caffe-build/build.py $(if $(BLAS),--blas $(BLAS))

test-caffe: caffe ## Caffe's own pycaffe test suite against the build
	$(PY) caffe-build/build.py $(if $(BLAS),--blas $(BLAS)) --test

test-caffe-cpp: caffe ## Caffe's own C++ CPU test suite against the build (compiled once: ~10 min)
	$(PY) caffe-build/build.py $(if $(BLAS),--blas $(BLAS)) --test-cpp

test-project: caffe ## the project's own tests
	$(PY) -m pytest tests

test: test-caffe test-project ## all tests (what CI runs)

# ---- gpu ---------------------------------------------------------------------------
# The CUDA build of Caffe that the Dockerfile makes, checked on a machine without a GPU:
# the installed nvcc, cuBLAS/cuRAND/NCCL from NVIDIA's pip wheels, its own build cache (the
# team's .venv and CPU build are untouched); then pycaffe's test suite in CPU mode, NCCL
# compiled in, and GPU code for every architecture asked for (cuobjdump, also a wheel).
# CUDA 13's nvcc no longer targets Volta (sm_70); the image's CUDA 12 build does.
GPU_CACHE ?= $(HOME)/.cache/fcn-caffe-gpu
GPU_ARCHS ?= 75 80 86 89 90
GPU_WHEELS := nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-nccl-cu13==2.27.7
GPU_WHEELS_DIR := $(GPU_CACHE)/wheels-$(shell printf '%s' '$(GPU_WHEELS)' | sha256sum | cut -c1-12)
CUOBJDUMP_WHEEL := nvidia-cuda-cuobjdump==13.2.51
CUOBJDUMP := $(GPU_CACHE)/$(subst ==,-,$(CUOBJDUMP_WHEEL))/nvidia/cu13/bin/cuobjdump
GPU_BUILD = $(PY) caffe-build/build.py --no-pth --cache $(GPU_CACHE) --cuda "$(GPU_ARCHS)" \
	--cuda-libs $(GPU_WHEELS_DIR)/nvidia/cu13 --cuda-libs $(GPU_WHEELS_DIR)/nvidia/nccl

.PHONY: caffe-gpu-check

$(GPU_WHEELS_DIR)/.installed: | $(VENV_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps \
		--target $(GPU_WHEELS_DIR) $(GPU_WHEELS)
	touch $@

$(CUOBJDUMP): | $(VENV_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps \
		--target $(GPU_CACHE)/$(subst ==,-,$(CUOBJDUMP_WHEEL)) $(CUOBJDUMP_WHEEL)

caffe-gpu-check: $(GPU_WHEELS_DIR)/.installed $(CUOBJDUMP) ## build Caffe for CUDA GPUs here (no GPU needed) and test it
	$(GPU_BUILD) --test
	$(GPU_BUILD) --info | $(PY) -c 'import json, sys; print(json.load(sys.stdin)["pythonpath"])' \
		> $(GPU_CACHE)/pythonpath
	PYTHONPATH=$$(cat $(GPU_CACHE)/pythonpath) $(PY) -c 'import caffe; \
		assert caffe.has_nccl(), "this CUDA build lacks NCCL"; print("pycaffe:", caffe.__file__)'
	lib=$$(cat $(GPU_CACHE)/pythonpath)/../../libcaffe.so; \
	code=$$($(CUOBJDUMP) --list-elf --list-ptx $$lib | grep -o 'sm_[0-9]*\.\(cubin\|ptx\)' | sort -u); \
	echo "GPU code in libcaffe.so:" $$code; \
	ptx=$$(printf '%s\n' $(GPU_ARCHS) | sort -n | tail -1); \
	for want in $(GPU_ARCHS:%=sm_%.cubin) sm_$$ptx.ptx; do grep -qx $$want <<<"$$code" \
		|| { echo "error: $$lib lacks $$want"; exit 1; }; done

# ---- models ------------------------------------------------------------------------

.PHONY: models models-check

models: caffe ## regenerate models/<name>/*.prototxt from the model table (models/specs.py)
	$(PY) -m models.generate

models-check: caffe ## fail if a committed prototxt differs from what the generators emit
	$(PY) -m models.generate --check

# ---- data --------------------------------------------------------------------------
# Datasets go under the data root: $FCN_DATA_DIR (relative: to the repository), else data/.
# Downloads resume and are verified; mirrors and archives already on disk are taken from
# FCN_DATA_MIRROR, FCN_ARCHIVES, FCN_URL_<KEY> (see `.venv/bin/python -m data.prepare -h`).
# A finished dataset leaves a stamp, <root>/downloads/<dataset>.prepared: it is not redone.

DATA_ROOT := $(abspath $(or $(FCN_DATA_DIR),data))

.PHONY: data-voc data-nyud data-siftflow data-pascalcontext

data-voc: $(DATA_ROOT)/downloads/voc.prepared ## PASCAL VOC2011 + SBD, seg11valid split (3 GB download)
data-nyud: $(DATA_ROOT)/downloads/nyud.prepared ## NYUDv2: colour, depth, HHA, 40 classes (Gupta et al.)
data-siftflow: $(DATA_ROOT)/downloads/siftflow.prepared ## SIFT Flow with trainval/test splits
data-pascalcontext: $(DATA_ROOT)/downloads/pascalcontext.prepared ## VOC2010 + PASCAL-Context, 59 classes

$(DATA_ROOT)/downloads/%.prepared: | $(VENV_STAMP)
	$(PY) -m data.prepare $*

# ---- pipeline ----------------------------------------------------------------------
# `make MODEL` (any model of models/specs.py) trains MODEL and everything it starts from,
# then scores it: dataset check -> base weights by surgery (weights/*-fcn.caffemodel) ->
# each stage (runs/<stage>/final.caffemodel) -> runs/MODEL/score.json on its val split.
# Every step is a file, so an interrupted pipeline picks up where it stopped, and a stage
# that was stopped resumes from its newest snapshot. GPU=N trains on GPU N, GPUS=0,1,...
# on several (one process each, NCCL); the CPU otherwise.

MODEL_NAMES := $(patsubst models/%/solver.prototxt,%,$(wildcard models/*/solver.prototxt))
comma := ,
DEVICE := $(if $(GPUS),--gpus $(GPUS),$(if $(GPU),--gpu $(GPU),--cpu))
SCORE_DEVICE := $(if $(GPUS),--gpu $(firstword $(subst $(comma), ,$(GPUS))),$(if $(GPU),--gpu $(GPU),--cpu))
STRESS_ITERATIONS ?= 3000
# What each stage starts from and which dataset it needs come from the model table, as
# rules generated into runs/.pipeline.mk; read only when a pipeline target is asked for.
PIPELINE_RULES := runs/.pipeline.mk

.PHONY: $(MODEL_NAMES) stress

ifneq ($(filter $(MODEL_NAMES) demo runs/% weights/%,$(MAKECMDGOALS)),)
include $(PIPELINE_RULES)
endif

$(PIPELINE_RULES): models/specs.py solve/pipeline.py
	@mkdir -p $(@D)
	$(PYTHON) solve/pipeline.py > $@.tmp && mv $@.tmp $@

voc-fcn8s: ## e.g. VOC FCN-32s -> 16s -> 8s from VGG16, scored (`make MODEL` for any model; GPU=N)

$(MODEL_NAMES:%=runs/%/score.json): runs/%/score.json: runs/%/final.caffemodel | caffe
	$(PY) solve/score.py $* --weights $< --json $@ $(SCORE_DEVICE)

# A final weights file older than what its stage starts from means that stage is trained
# again: its old snapshots are moved aside, not resumed.
$(MODEL_NAMES:%=runs/%/final.caffemodel): runs/%/final.caffemodel:
	@if [ -e $@ ]; then \
		echo "$@ is older than what $* starts from: training $* again"; \
		mv runs/$*/snapshots runs/$*/snapshots-stale-$$(date +%Y%m%d-%H%M%S) 2>/dev/null; \
		rm -f $@; fi
	$(PY) solve/solve.py $* $(DEVICE) --resume auto

weights/vgg16-fcn.caffemodel: weights/VGG_ILSVRC_16_layers.caffemodel | caffe
	$(PY) solve/surgery.py to-fcn --classifier models/vgg16/deploy.prototxt --weights $< \
		--fcn models/voc-fcn32s/deploy.prototxt --out $@

weights/alexnet-fcn.caffemodel: weights/bvlc_reference_caffenet.caffemodel | caffe
	$(PY) solve/surgery.py to-fcn --classifier models/caffenet/deploy.prototxt --weights $< \
		--fcn models/voc-fcn-alexnet/deploy.prototxt --out $@

weights/toy-vgg16-fcn.caffemodel: runs/toy-vgg16/final.caffemodel | caffe
	$(PY) solve/surgery.py to-fcn --classifier models/toy-vgg16/deploy.prototxt --weights $< \
		--fcn models/toy-fcn32s/deploy.prototxt --out $@

# The ILSVRC classifiers are downloaded by hand (they are not redistributed here).
weights/VGG_ILSVRC_16_layers.caffemodel:
	@echo "$@ is missing: the ILSVRC-2014 VGG16 classifier (528 MB). Download it with"
	@echo "  mkdir -p weights && wget -O $@ http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/VGG_ILSVRC_16_layers.caffemodel"
	@exit 1

weights/bvlc_reference_caffenet.caffemodel:
	@echo "$@ is missing: the BVLC reference CaffeNet classifier (233 MB). Download it with"
	@echo "  mkdir -p weights && wget -O $@ http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel"
	@exit 1

stress: caffe ## long runs end cleanly: tiny FCNs train STRESS_ITERATIONS=3000 iterations and exit 0; a diverging run stops with a clear error
	$(PY) solve/stress.py --iterations $(STRESS_ITERATIONS)

# ---- googlenet ---------------------------------------------------------------------
# FCN-GoogLeNet, the paper's third net (models/README.md, section FCN-GoogLeNet), trains
# through the pipeline rules above and starts from BVLC GoogLeNet carried over by surgery.

voc-fcn-googlenet: ## FCN-GoogLeNet on VOC from BVLC GoogLeNet, scored (GPU=N)

GOOGLENET_SHA1 := 405fc5acd08a3bb12de8ee5e23a96bec22f08204

weights/googlenet-fcn.caffemodel: weights/bvlc_googlenet.caffemodel | caffe
	@echo "$(GOOGLENET_SHA1)  $<" | sha1sum --check --quiet || \
		{ echo "$< is not BVLC GoogLeNet (sha1 differs): download it again"; exit 1; }
	$(PY) solve/surgery.py to-fcn --classifier models/googlenet/deploy.prototxt --weights $< \
		--fcn models/voc-fcn-googlenet/deploy.prototxt --out $@

weights/bvlc_googlenet.caffemodel:
	@echo "$@ is missing: the BVLC GoogLeNet classifier (53 MB). Download it with"
	@echo "  mkdir -p weights && wget -O $@ http://dl.caffe.berkeleyvision.org/bvlc_googlenet.caffemodel"
	@exit 1

# ---- bench -------------------------------------------------------------------------

# PyTorch is what the benchmark compares against, never a project dependency: it is
# installed here, not by requirements.txt (2.13.0 is a CPU build).
BENCH_TORCH := torch==2.13.0

.PHONY: bench bench-torch

bench-torch: $(VENV_STAMP) ## PyTorch (CPU) in the virtualenv, for `make bench` only
	$(PY) -c 'import torch' 2>/dev/null || \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check $(BENCH_TORCH)

bench: caffe bench-torch ## Caffe vs PyTorch on voc-fcn8s: speed, GEMM use, memory (BENCH_ARGS=)
	$(PY) -m bench $(BENCH_ARGS)

# ---- demo --------------------------------------------------------------------------
# `make demo`: the whole FCN method on the embedded toy set, on the CPU, in minutes.
# data/toy.py generates the set (seeded, in seconds); the pipeline rules above then
# pretrain the toy VGG16 classifier (toy-vgg16), carry it into FCN base weights by
# surgery, train toy-fcn32s -> toy-fcn16s -> toy-fcn8s, each from the previous, and score
# each; solve/demo.py gathers scores, curves and a prediction sheet into runs/demo/.
# Every step is a file: an interrupted demo resumes, a finished one is not redone.

TOY_STAMP := $(DATA_ROOT)/toy/toy.json
TOY_SCORES := $(foreach stride,32 16 8,runs/toy-fcn$(stride)s/score.json)

.PHONY: data-toy

data-toy: $(TOY_STAMP) ## the embedded toy set: VOC-layout shapes + a classification view
demo: runs/demo/scores.json ## toy classifier -> surgery -> FCN-32s -> 16s -> 8s, CPU, ~12 min

# The generator leaves a set with the same parameters and code alone; the stamp is then
# only brought up to date.
$(TOY_STAMP): data/toy.py | $(VENV_STAMP)
	$(PY) data/toy.py --out $(DATA_ROOT)/toy
	touch $@

runs/demo/scores.json: $(TOY_SCORES) solve/demo.py | caffe
	$(PY) solve/demo.py --cpu --data-dir $(DATA_ROOT)

# The toy solvers fix random_seed: two short runs of the classifier, surgery and FCN-32s
# must end with the same weights, bit for bit, and the same scores.
REPEAT_DIR := runs/repeat-check
.PHONY: demo-repeat-check

demo-repeat-check: $(TOY_STAMP) | caffe ## two short toy runs (classifier, surgery, FCN-32s) give identical weights and scores
	for run in 1 2; do d=$(REPEAT_DIR)/$$run; rm -rf $$d && \
		$(PY) solve/solve.py toy-vgg16 --cpu --data-dir $(DATA_ROOT) --steps 4 --test-every 4 \
			--val-images 64 --snapshot-every 0 --run-dir $$d/toy-vgg16 && \
		$(PY) solve/surgery.py to-fcn --classifier models/toy-vgg16/deploy.prototxt \
			--weights $$d/toy-vgg16/final.caffemodel --fcn models/toy-fcn32s/deploy.prototxt \
			--out $$d/toy-vgg16-fcn.caffemodel && \
		$(PY) solve/solve.py toy-fcn32s --cpu --data-dir $(DATA_ROOT) --steps 10 --test-every 10 \
			--val-images 16 --snapshot-every 0 --weights $$d/toy-vgg16-fcn.caffemodel \
			--run-dir $$d/toy-fcn32s || exit 1; done
	for file in toy-vgg16/final.caffemodel toy-vgg16/val_log.json toy-fcn32s/final.caffemodel \
			toy-fcn32s/val_log.json; do \
		cmp $(REPEAT_DIR)/1/$$file $(REPEAT_DIR)/2/$$file || exit 1; done
	@echo "two runs: the same weights, losses and scores"
