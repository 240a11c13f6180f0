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

.PHONY: help venv venv-infer caffe test test-caffe test-caffe-cpp test-project browser test-browser

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

# Inference without Caffe: numpy, pillow, ONNX Runtime and OpenCV only (no build, no
# compiler); infer.py --runtime opencv|onnxruntime runs from it.
VENV_INFER ?= .venv-infer
VENV_INFER_STAMP := $(VENV_INFER)/.requirements-installed

$(VENV_INFER_STAMP): requirements-infer.txt
	$(PYTHON) -m venv $(VENV_INFER)
	$(VENV_INFER)/bin/pip install --quiet --disable-pip-version-check -r requirements-infer.txt
	$(VENV_INFER)/bin/python -c 'import pathlib, sysconfig; \
		pathlib.Path(sysconfig.get_paths()["purelib"], "fcn-project.pth").write_text("$(CURDIR)\n")'
	touch $@

venv-infer: $(VENV_INFER_STAMP) ## a light virtualenv (.venv-infer) for infer.py --runtime opencv|onnxruntime: no Caffe

caffe: $(VENV_STAMP) ## build BVLC Caffe from source (cached; CAFFE_SRC=tree|tarball, BLAS=openblas|openblas-pthread|blis); MKL made ready on Intel CPUs (FCN_BLAS=auto|mkl|default)
	$(PY) caffe-build/build.py $(if $(BLAS),--blas $(BLAS))

test-caffe: caffe ## Caffe's own pycaffe test suite against the build
	$(PY) caffe-build/build.py $(if $(BLAS),--blas $(BLAS)) --test

test-caffe-cpp: caffe ## Caffe's own C++ CPU test suite against the build, on the BLAS chosen at run time (FCN_BLAS=mkl: MKL; compiled once: ~10 min)
	$(PY) caffe-build/build.py $(if $(BLAS),--blas $(BLAS)) --test-cpp

test-project: caffe browser ## the project's own tests
	$(PY) -m pytest tests

# The results page's browser test loads the page in Debian's Chromium, headless: installed
# here when missing (as root; otherwise the apt-get command is printed and the test skipped).
browser: | $(VENV_STAMP)
	$(PY) tests/browser.py install

test-browser: caffe browser ## the results page in headless Chromium (~15 s)
	$(PY) -m pytest tests/test_page_browser.py

test: test-caffe test-project ## all tests (what CI runs)

# ---- gpu ---------------------------------------------------------------------------
# The CUDA build of Caffe that the Dockerfile makes, checked on a machine without a GPU:
# the installed nvcc, cuBLAS/cuRAND/NCCL from NVIDIA's pip wheels, its own build cache (the
# team's .venv and CPU build are untouched); then pycaffe's test suite in CPU mode, NCCL
# compiled in, and GPU code for every architecture asked for (cuobjdump, also a wheel).
# CUDA 13's nvcc no longer targets Volta (sm_70); the image's CUDA 12 build does.
GPU_CACHE ?= $(HOME)/.cache/fcn-caffe-gpu
GPU_ARCHS ?= 75 80 86 89 90 100 120
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
#
# A short run of the same chain, to see it work before spending GPU days: STEPS=N trains
# every stage N iterations (scored once, at the end), VAL_IMAGES=N validates and scores on
# the first N val images. A short run lives apart, in runs/short/steps<N>-val<N>/ with its
# own surgery outputs in weights/ below it, so no full run ever resumes from or starts
# from its weights; late fusion then starts from its nets' final weights (their
# snapshots at 28000 and 60000 do not exist).

MODEL_NAMES := $(patsubst models/%/solver.prototxt,%,$(wildcard models/*/solver.prototxt))
# Models declared on one's own data (solve/new_model.py): `make NAME` trains the chain of
# stages. FCN_USER_MODELS_DIR names another folder of declarations (models/declared.py).
USER_MODELS := $(or $(FCN_USER_MODELS_DIR),models/user)
DECLARED_NAMES := $(patsubst $(USER_MODELS)/%.json,%,$(wildcard $(USER_MODELS)/*.json))
comma := ,
DEVICE := $(if $(GPUS),--gpus $(GPUS),$(if $(GPU),--gpu $(GPU),--cpu))
SCORE_DEVICE := $(if $(GPUS),--gpu $(firstword $(subst $(comma), ,$(GPUS))),$(if $(GPU),--gpu $(GPU),--cpu))
STRESS_ITERATIONS ?= 3000
ifneq ($(STEPS)$(VAL_IMAGES),)
RUNS := runs/short/steps$(or $(STEPS),-full)-val$(or $(VAL_IMAGES),-all)
BASE_WEIGHTS := $(RUNS)/weights
SHORT_TRAIN := $(if $(STEPS),--iterations $(STEPS) --test-every $(STEPS)) \
	$(if $(VAL_IMAGES),--val-images $(VAL_IMAGES)) --init-from final
SHORT_SCORE := $(if $(VAL_IMAGES),--images $(VAL_IMAGES))
else
RUNS := runs
BASE_WEIGHTS := weights
endif
# The ILSVRC classifiers surgery starts from (the rehearsal points it at its stand-ins).
CLASSIFIER_DIR ?= weights
# solve.py and score.py find the runs and base weights here.
export FCN_RUNS_DIR := $(RUNS)
export FCN_WEIGHTS_DIR := $(BASE_WEIGHTS)
# What each stage starts from and which dataset it needs come from the model table, as
# rules generated into runs/.pipeline.mk; read only when a pipeline target is asked for.
PIPELINE_RULES := runs/.pipeline.mk

.PHONY: $(MODEL_NAMES) $(DECLARED_NAMES) stress

ifneq ($(filter $(MODEL_NAMES) $(DECLARED_NAMES) demo runs/% weights/% $(RUNS)/% $(BASE_WEIGHTS)/% released-% eval-%,$(MAKECMDGOALS)),)
include $(PIPELINE_RULES)
endif

$(PIPELINE_RULES): models/records.py models/specs.py models/declared.py models/registry.py \
		data/weights.py pipeline/make_rules.py \
		$(wildcard $(USER_MODELS) $(USER_MODELS)/*.json)
	@mkdir -p $(@D)
	$(PYTHON) -m pipeline.make_rules > $@.tmp && mv $@.tmp $@

voc-fcn8s: ## e.g. VOC FCN-32s -> 16s -> 8s from VGG16, scored (`make MODEL` for any model; GPU=N; STEPS=N VAL_IMAGES=N for a short run)

# The scoring command; SHARDS=N splits it into N pieces merged into score.json (see
# the cluster section).
SCORE = $(PY) solve/score.py $* --weights $< --json $(basename $@).json $(SCORE_DEVICE) $(SHORT_SCORE)
ifeq ($(filter-out 0 1,$(SHARDS)),)
$(MODEL_NAMES:%=$(RUNS)/%/score.json): $(RUNS)/%/score.json: $(RUNS)/%/final.caffemodel | caffe
	$(SCORE)
endif

# A final weights file older than what its stage starts from means that stage is trained
# again: its old snapshots are moved aside, not resumed.
$(MODEL_NAMES:%=$(RUNS)/%/final.caffemodel): $(RUNS)/%/final.caffemodel:
	@if [ -e $@ ]; then \
		echo "$@ is older than what $* starts from: training $* again"; \
		mv $(RUNS)/$*/snapshots $(RUNS)/$*/snapshots-stale-$$(date +%Y%m%d-%H%M%S) 2>/dev/null; \
		rm -f $@; fi
	$(PY) solve/solve.py $* $(DEVICE) --resume auto $(SHORT_TRAIN)

$(BASE_WEIGHTS)/vgg16-fcn.caffemodel: $(CLASSIFIER_DIR)/VGG_ILSVRC_16_layers.caffemodel | caffe
	$(PY) solve/surgery.py to-fcn --classifier models/vgg16/deploy.prototxt --weights $< \
		--fcn models/voc-fcn32s/deploy.prototxt --out $@

$(BASE_WEIGHTS)/alexnet-fcn.caffemodel: $(CLASSIFIER_DIR)/bvlc_reference_caffenet.caffemodel | caffe
	$(PY) solve/surgery.py to-fcn --classifier models/caffenet/deploy.prototxt --weights $< \
		--fcn models/voc-fcn-alexnet/deploy.prototxt --out $@

$(BASE_WEIGHTS)/toy-vgg16-fcn.caffemodel: $(RUNS)/toy-vgg16/final.caffemodel | caffe
	$(PY) solve/surgery.py to-fcn --classifier models/toy-vgg16/deploy.prototxt --weights $< \
		--fcn models/toy-fcn32s/deploy.prototxt --out $@

stress: caffe ## long runs end cleanly: tiny FCNs train STRESS_ITERATIONS=3000 iterations and exit 0; a diverging run stops with a clear error
	$(PY) -m checks.stress --iterations $(STRESS_ITERATIONS)

# ---- cluster -----------------------------------------------------------------------
# `make cluster-MODEL` submits what `make MODEL` would make to SLURM: one job per file
# (surgery, each stage, the scoring), each running `make THAT-FILE` with the same
# variables (STEPS, VAL_IMAGES, SHARDS, RUNS, ...), started once the jobs it needs have
# succeeded; what is done is not submitted. A stage asked to stop (STOP_BEFORE seconds
# before TIME_LIMIT, or preempted) snapshots and requeues itself, and resumes.
# `make cluster-all`: every model whose data is prepared; `make cluster-status`: the
# submitted chains and their jobs; DRY_RUN=1 prints the sbatch commands instead. Logs go
# to runs/MODEL/slurm/. Settings: below, on the command line, or in cluster.mk.
#
# SHARDS=N (also without a cluster, with make -jN) scores each model in N pieces,
# runs/MODEL/score-shards/I-of-N.npz (score.py --shard I/N --save-hist), merged into
# runs/MODEL/score.json (score.py --merge); on a cluster the pieces are an array job.

# GPUS_PER_JOB: GPUs of a training job (0: the CPU; scoring takes one). TIME_LIMIT: every
# job's sbatch --time. STOP_BEFORE: seconds before it when a stage snapshots and requeues.
# SBATCH_FLAGS: more sbatch options (--qos=long --mem=32G). CLUSTER_EXEC: run make through
# this, a container runtime (README, "Beyond one machine").
-include cluster.mk
GPUS_PER_JOB ?= 1
CPUS_PER_JOB ?= 4
PARTITION ?=
ACCOUNT ?=
TIME_LIMIT ?=
STOP_BEFORE ?= 600
SBATCH_FLAGS ?=
CLUSTER_EXEC ?=
CLUSTER_SETTINGS := GPUS_PER_JOB CPUS_PER_JOB PARTITION ACCOUNT TIME_LIMIT STOP_BEFORE \
	SBATCH_FLAGS CLUSTER_EXEC DRY_RUN
# The jobs get the command line's other variables (STEPS, RUNS, ...).
CLUSTER_SUBMIT = $(PYTHON) -m pipeline.slurm submit --gpus-per-job='$(GPUS_PER_JOB)' \
	--cpus-per-job='$(CPUS_PER_JOB)' --partition='$(PARTITION)' --account='$(ACCOUNT)' \
	--time-limit='$(TIME_LIMIT)' --stop-before='$(STOP_BEFORE)' \
	--sbatch-flags='$(SBATCH_FLAGS)' --exec='$(CLUSTER_EXEC)' $(if $(DRY_RUN),--dry-run) \
	--settings='$(CLUSTER_SETTINGS)' $(MAKEOVERRIDES)

.PHONY: $(MODEL_NAMES:%=cluster-%) cluster-all cluster-status test-cluster

cluster-voc-fcn8s: ## e.g. submit voc-fcn8s's chain to SLURM (`make cluster-MODEL` for any model; GPUS_PER_JOB, PARTITION, TIME_LIMIT, ...)
$(MODEL_NAMES:%=cluster-%): cluster-%: $(PIPELINE_RULES)
	$(CLUSTER_SUBMIT) $*

cluster-all: $(PIPELINE_RULES) ## submit every model whose dataset is prepared to SLURM
	$(CLUSTER_SUBMIT) --all

cluster-status: ## the chains submitted to SLURM: each job, its state and log
	$(PYTHON) -m pipeline.slurm status $(RUNS)

# The tests against a real SLURM: a single-node cluster started and stopped by the tests
# (as root; Debian's slurm-wlm and munge, installed here when missing).
test-cluster: caffe ## the toy chain and sharded scoring on a real local SLURM (root)
	$(PY) tests/local_slurm.py install
	FCN_CLUSTER_TESTS=1 $(PY) -m pytest tests/test_cluster_slurm.py

ifneq ($(filter-out 0 1,$(SHARDS)),)
ifeq ($(shell [ "$(SHARDS)" -gt 1 ] 2>/dev/null && echo ok),)
$(error SHARDS=$(SHARDS): give the number of pieces to score in)
endif
SHARD_INDICES := $(shell seq 0 $$(($(SHARDS) - 1)))
$(MODEL_NAMES:%=$(RUNS)/%/score.json): $(RUNS)/%/score.json: \
		$(foreach i,$(SHARD_INDICES),$(RUNS)/%/score-shards/$(i)-of-$(SHARDS).npz)
	$(PY) solve/score.py --merge $^ --json $@

define SHARD_RULE
$(MODEL_NAMES:%=$(RUNS)/%/score-shards/$1-of-$(SHARDS).npz): \
		$(RUNS)/%/score-shards/$1-of-$(SHARDS).npz: $(RUNS)/%/final.caffemodel | caffe
	$$(SCORE) --shard $1/$(SHARDS) --save-hist $$@ --save-dir $(RUNS)/$$*/predictions
endef
$(foreach i,$(SHARD_INDICES),$(eval $(call SHARD_RULE,$(i))))
endif

# ---- googlenet ---------------------------------------------------------------------
# FCN-GoogLeNet, the paper's third net (models/README.md, section FCN-GoogLeNet), trains
# through the pipeline rules above and starts from BVLC GoogLeNet carried over by surgery.

voc-fcn-googlenet: ## FCN-GoogLeNet on VOC from BVLC GoogLeNet, scored (GPU=N)

$(BASE_WEIGHTS)/googlenet-fcn.caffemodel: $(CLASSIFIER_DIR)/bvlc_googlenet.caffemodel | caffe
	$(PY) solve/surgery.py to-fcn --classifier models/googlenet/deploy.prototxt --weights $< \
		--fcn models/voc-fcn-googlenet/deploy.prototxt --out $@

# ---- published weights -------------------------------------------------------------
# The ILSVRC classifiers surgery starts from and the trained FCNs of the reference release,
# from one table (models/weights.py), fetched, resumed and verified like the datasets, with
# the same overrides: FCN_DATA_MIRROR (serving the published file names), FCN_ARCHIVES,
# FCN_URL_<KEY> (the keys: `.venv/bin/python -m data.prepare --list`). The classifiers go
# to weights/, the released FCNs to weights/released/; `make eval-MODEL` scores those on
# the model's evaluation split into runs/released/MODEL/score.json (VAL_IMAGES=N: on its
# first N images, into the short run's folder), and `make report` sets every model's
# published, released and own scores side by side.

.PHONY: eval-released report page
# Downloads are renamed into place only when complete and verified: never delete them.
.PRECIOUS: weights/%.caffemodel

weights/%.caffemodel: | $(VENV_STAMP)
	$(PY) -m data.prepare --weights $@

# Classifiers kept elsewhere (CLASSIFIER_DIR, as the rehearsal does) are fetched there.
ifneq ($(CLASSIFIER_DIR),weights)
.PRECIOUS: $(CLASSIFIER_DIR)/%.caffemodel
$(CLASSIFIER_DIR)/%.caffemodel: | $(VENV_STAMP)
	$(PY) -m data.prepare --weights $@
endif

released-voc-fcn8s: ## fetch the reference release's weights (`make released-MODEL` for any released model)
eval-voc-fcn8s: ## score the released weights on the model's val split (`make eval-MODEL`)

$(RUNS)/released/%/score.json: | caffe
	$(PY) solve/score.py $* --weights released --json $@ $(SCORE_DEVICE) $(SHORT_SCORE)

released-% eval-%:
	@echo "error: no released weights for $*; the reference released: $(RELEASED_MODELS)"; exit 1

eval-released: $(RELEASED_WITH_DATA:%=eval-%) ## score every released model whose dataset is prepared
	@echo "scored the released weights of: $(or $(strip $(RELEASED_WITH_DATA)),none)"
	@echo "no dataset prepared for: $(or $(filter-out $(RELEASED_WITH_DATA),$(RELEASED_MODELS)),-)"

report: | $(VENV_STAMP) ## paper vs released weights vs your runs: runs/report/reproduction.{md,png}
	$(PY) solve/report.py

# The results page of every scored run in $(RUNS): metrics, curves, confusion, the
# reproduction table, and the val images each run's scoring saved, sortable and side by
# side (fcn/reports/page.py). Thumbnails are rendered once and reused.
page: | caffe ## the results page of every run: runs/page/index.html (open it in a browser)
	$(PY) solve/page.py --runs-dir $(RUNS) --data-dir $(DATA_ROOT)

# ---- your own data -----------------------------------------------------------------
# A dataset of one's own (data/check.py: VOC layout or images/ + masks/, and classes.txt)
# is checked, a model is declared on it (solve/new_model.py NAME --data DIR --from ...,
# which writes models/user/NAME.json and the prototxts), and `make NAME` checks the data
# into runs/NAME/data-check.json, trains every stage and scores the last (README: "Train
# on your own data").

.PHONY: data-check

# It also builds Caffe, which solve/new_model.py, the next step, needs.
data-check: | caffe ## check a dataset of your own before training on it (DATA=DIR)
	@test -n "$(DATA)" || { echo "usage: make data-check DATA=DIR (the dataset folder)"; exit 2; }
	$(PY) data/check.py "$(DATA)"

runs/%/data-check.json:
	$(PY) data/check.py --model $* --json $@

# ---- bench -------------------------------------------------------------------------

# PyTorch is what the benchmark compares against, never a project dependency: it is
# installed here, not by requirements.txt (2.13.0 is a CPU build).
BENCH_TORCH := torch==2.13.0

.PHONY: bench bench-torch bench-blas bench-runtimes

bench-torch: $(VENV_STAMP) ## PyTorch (CPU) in the virtualenv, for `make bench` only
	$(PY) -c 'import torch' 2>/dev/null || \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check $(BENCH_TORCH)

bench: caffe bench-torch ## Caffe vs PyTorch on voc-fcn8s: speed, GEMM use, memory (BENCH_ARGS=); then bench-runtimes
	$(PY) -m bench $(BENCH_ARGS)
	$(PY) -m bench.runtimes

# The runtimes infer.py runs on (Caffe, OpenCV, ONNX Runtime): FCN-8s's forward pass at
# 500x375, each in its own process, checked against Caffe first.
bench-runtimes: caffe ## Caffe vs OpenCV vs ONNX Runtime: FCN-8s forward time and peak memory, CPU
	$(PY) -m bench.runtimes

# The same Caffe binary on each other BLAS (bench/blas.py fetches MKL and a current
# OpenBLAS as pinned wheels, installs Debian's other builds), against the BLAS the tools
# choose at run time (solve/caffe_env.py: MKL on Intel CPUs; FCN_BLAS=default: Debian's).
bench-blas: caffe bench-torch ## Caffe on MKL, OpenBLAS 0.3.34, Debian's pthread OpenBLAS and BLIS vs the chosen BLAS (BENCH_ARGS=)
	$(PY) -m bench --parts forward train --blas all $(BENCH_ARGS)

# ---- demo --------------------------------------------------------------------------
# `make demo`: the whole FCN method on the embedded toy set, on the CPU, in minutes.
# data/toy.py generates the set (seeded, in seconds); the pipeline rules above then
# pretrain the toy VGG16 classifier (toy-vgg16), carry it into FCN base weights by
# surgery, train toy-fcn32s -> toy-fcn16s -> toy-fcn8s, each from the previous, and score
# each; solve/demo_report.py gathers scores, curves and a prediction sheet into runs/demo/.
# The demo ends with the results page of its runs (solve/page.py: runs/page/index.html).
# Every step is a file: an interrupted demo resumes, a finished one is not redone.

TOY_STAMP := $(DATA_ROOT)/toy/toy.json
TOY_SCORES := $(foreach stride,32 16 8,$(RUNS)/toy-fcn$(stride)s/score.json)

.PHONY: data-toy

data-toy: $(TOY_STAMP) ## the embedded toy set: VOC-layout shapes + a classification view
demo: $(RUNS)/demo/scores.json ## toy classifier -> surgery -> FCN-32s -> 16s -> 8s, CPU, ~9 min on 2 cores; ends with the results page
	$(PY) solve/page.py --runs-dir $(RUNS) --data-dir $(DATA_ROOT)

# The generator leaves a set with the same parameters and code alone; the stamp is then
# only brought up to date.
$(TOY_STAMP): data/toy.py | $(VENV_STAMP)
	$(PY) data/toy.py --out $(DATA_ROOT)/toy
	touch $@

$(RUNS)/demo/scores.json: $(TOY_SCORES) solve/demo_report.py fcn/reports/demo.py | caffe
	$(PY) solve/demo_report.py --cpu --data-dir $(DATA_ROOT)

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

# The demo from scratch for each seed and BLAS kernel choice, one after another, each in a
# copy of the tree (bench/demo_band.py): the band of scores and times a run falls in.
# About 8 minutes a run on 2 cores; run nothing else meanwhile.
.PHONY: demo-band
demo-band: | caffe ## the demo for 3 seeds x 2 BLAS kernels: its band of scores and times (~50 min; BAND_ARGS=)
	$(PY) -m bench.demo_band $(BAND_ARGS)

# ---- runtimes ----------------------------------------------------------------------
# Inference without Caffe, checked against Caffe at full width: every FCN deploy net with
# random weights of the real shapes, exported to ONNX by the project's converter and run
# on ONNX Runtime, and read from its prototxt and caffemodel by OpenCV, at two odd input
# sizes (make test does the same at 1/16 of the width: tests/test_runtimes.py).

.PHONY: check-runtimes

check-runtimes: caffe ## OpenCV and ONNX Runtime vs Caffe on every FCN at full width (MODELS=..., SIZES=37x53,61x45)
	$(PY) -m checks.runtimes $(if $(SIZES),--sizes $(SIZES)) $(subst $(comma), ,$(MODELS))

# ---- rehearsal ---------------------------------------------------------------------
# Every real pipeline at full size on the CPU, with only the iteration and image counts
# cut: for each FCN of the table, `make MODEL STEPS=N VAL_IMAGES=N` on made-up datasets in
# the real formats at real image sizes (served on 127.0.0.1 as the download mirror) and
# random ILSVRC classifiers of the real size and format, all in REHEARSAL_DIR. One line a
# model: stages, seconds, peak memory, mean IU. Measured times: README, "The rehearsal".

REHEARSAL_DIR ?= runs/rehearsal

.PHONY: rehearsal

rehearsal: caffe ## every FCN's make target at full size on the CPU, a few iterations each (MODELS=..., STEPS=1, VAL_IMAGES=2)
	$(PY) -m checks.rehearsal --dir $(REHEARSAL_DIR) --steps $(or $(STEPS),1) \
		--val-images $(or $(VAL_IMAGES),2) $(subst $(comma), ,$(MODELS))
