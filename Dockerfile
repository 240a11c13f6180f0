# syntax=docker/dockerfile:1
# FCN on BVLC Caffe, built for NVIDIA GPUs: the image for real training runs. The README
# ("Training on GPUs") has the commands: `docker build -t fcn .`, then `docker run` with
# the host folders created beforehand and mounted, --user "$(id -u):$(id -g)",
# --stop-timeout, and --shm-size for several GPUs.
#
# Volumes: /data is the data root (FCN_DATA_DIR; `make data-voc` etc. fill it), /fcn/weights
# holds the ILSVRC classifiers and the base weights surgery makes from them, /fcn/runs
# receives snapshots, logs, plots and scores. The code and its venv are read-only; the
# container runs as uid 1000 (`fcn`), or as `--user "$(id -u):$(id -g)"` to own its output.
# pipeline/container.py, the entry point, stops at once if it cannot write those folders.
#
# Caffe is built by caffe-build/build.py with the same pinned Debian source and the same
# patches as the CPU build: CPU_ONLY off, NCCL on, real code for sm_70 (Volta) to sm_120
# (Blackwell) plus PTX for compute_120, which newer GPUs compile when the library loads.
# The CUDA 12.9 base asks for an NVIDIA driver of CUDA 12.9 (Linux >= 575.57.08); an older
# driver of the CUDA 12 family (>= 525.60.13) that it refuses still runs the compiled code,
# through CUDA's minor version compatibility, with -e NVIDIA_DISABLE_REQUIRE=1.
# cuDNN is off: Caffe's own CUDA kernels (im2col + cuBLAS GEMM) do every layer. BVLC
# Caffe's cuDNN layers call algorithm-selection functions that cuDNN 8 removed; a patch
# replacing them would change which convolution algorithms run (and so results in the last
# bits, run to run), and the speed it buys is not needed to reproduce the paper.
#
# One machine, many GPUs: `make voc-fcn8s GPUS=0,1,2,3` (solve.py --gpus 0,1,2,3) trains
# with one process per GPU, each on its own shard of the training set, NCCL averaging the
# gradients every iteration: N GPUs step like one GPU with iter_size N. BVLC Caffe has no
# multi-machine training; what spreads across machines is evaluation: `score.py --shard
# I/N --save-hist H` scores one shard of a split per machine (or GPU), and `score.py
# --merge H...` adds the shards' confusion matrices up to the full score.

ARG CUDA_VERSION=12.9.1
ARG UBUNTU_VERSION=24.04
# GPU code for these compute capabilities (--build-arg CUDA_ARCHS="80 90" to trim).
ARG CUDA_ARCHS="70 75 80 86 89 90 100 120"
# Debian mirrors (space-separated) to ask for Caffe's source after the one the Debian
# image's own apt configuration names, e.g. once bullseye has left it for Debian's archive.
ARG CAFFE_DEBIAN_MIRROR=""

# ---- source: Caffe's pinned Debian source package, verified ------------------------
# A stage of the release the package belongs to: its apt configuration names a mirror
# that carries it, so no address is written here. build.py asks that mirror (then
# CAFFE_DEBIAN_MIRROR's) and checks the three files against debian-source.sha256.
FROM debian:bullseye AS source
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
COPY caffe-build/build.py caffe-build/debian-source.sha256 /caffe-build/
ARG CAFFE_DEBIAN_MIRROR
RUN python3 /caffe-build/build.py --fetch /caffe-source

# ---- build: Caffe from source and the project's virtualenv -------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Only what build.py does not install itself: make and Python (with headers, for
# pycaffe) to run it.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        make python3 python3-venv python3-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /fcn
COPY requirements.txt Makefile ./
RUN make venv

# The build's inputs are build.py and its patches alone, so editing the project's code
# does not rebuild Caffe. FCN_CAFFE_CUDA makes every `make caffe` pick the CUDA build,
# which finds the verified source where build.py keeps its downloads. pycaffe's own tests
# then run in CPU mode (no GPU is needed for them, nor present while building).
ARG CUDA_ARCHS
ENV FCN_CAFFE_CACHE=/opt/caffe \
    FCN_CAFFE_CUDA="${CUDA_ARCHS}"
COPY --from=source /caffe-source/ /opt/caffe/downloads/
COPY caffe-build/ caffe-build/
RUN make caffe \
    && make test-caffe \
    && rm -rf /opt/caffe/downloads /opt/caffe/apt /opt/caffe/*.lock

# The system packages that Caffe's libraries load, for the runtime stage to install.
RUN for lib in $(ldd /opt/caffe/*/prefix/lib/libcaffe.so* \
                     /opt/caffe/*/prefix/lib/python3/dist-packages/caffe/_caffe*.so \
                 | awk '$3 ~ /^\// {print $3}' | sort -u); do \
        dpkg -S "$(realpath "$lib")" 2>/dev/null | cut -d: -f1 || true; \
    done | sort -u > /opt/caffe/runtime-packages.txt \
    && test -s /opt/caffe/runtime-packages.txt

COPY . .
# The venv was made from this requirements.txt: keep make from redoing it at run time.
RUN mkdir -p runs weights && touch .venv/.requirements-installed

# ---- runtime: no compilers, no build tree ------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY --from=build /opt/caffe/runtime-packages.txt /tmp/
# Versions follow the base image's Ubuntu release, as in the build stage. Packages the
# base image has (CUDA's libraries, NCCL, held at its versions) are left alone.
# hadolint ignore=DL3008
RUN apt-get update \
    && comm -23 <(sort -u /tmp/runtime-packages.txt) \
                <(dpkg-query -W -f '${Package} ${db:Status-Status}\n' \
                  | awk '$2 == "installed" {print $1}' | sort -u) \
    | xargs env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        make python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt

COPY --from=build /opt/caffe /opt/caffe
COPY --from=build /fcn /fcn

# Ubuntu's images carry a user `ubuntu` at uid 1000; `fcn` takes that uid, the usual
# owner of the host folders mounted as volumes (USER names it by number: DL3066). Any
# other uid (docker run --user) writes the same places: HOME (the CUDA JIT cache,
# matplotlib's) and the volumes are open to all users, like /tmp.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid 1000 --shell /bin/bash fcn \
    && mkdir -p /data \
    && chown fcn:fcn /data /fcn/runs /fcn/weights \
    && chmod 1777 /home/fcn /data /fcn/runs /fcn/weights

ARG CUDA_ARCHS
ENV FCN_CAFFE_CACHE=/opt/caffe \
    FCN_CAFFE_CUDA="${CUDA_ARCHS}" \
    FCN_DATA_DIR=/data \
    FCN_OUTPUT_DIRS="/data /fcn/weights /fcn/runs" \
    HOME=/home/fcn
USER 1000
WORKDIR /fcn
# The runtime user finds the build stage's Caffe under the same key and imports it with
# the libraries installed above: a mismatch fails `docker build`, not the first training.
RUN make caffe \
    && .venv/bin/python -c 'import caffe; assert caffe.has_nccl(), "no NCCL"'
VOLUME ["/data", "/fcn/weights", "/fcn/runs"]
ENTRYPOINT ["/fcn/.venv/bin/python", "-m", "pipeline.container"]
CMD ["make", "help"]
