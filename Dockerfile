# syntax=docker/dockerfile:1
# FCN on BVLC Caffe, built for NVIDIA GPUs: the image for real training runs.
#
#   docker build -t fcn .
#   docker run --gpus all -v "$PWD/data":/data -v "$PWD/weights":/fcn/weights \
#       -v "$PWD/runs":/fcn/runs fcn make voc-fcn8s GPU=0
#
# Volumes: /data is the data root (FCN_DATA_DIR; `make data-voc` etc. fill it), /fcn/weights
# holds the ILSVRC classifiers and the base weights surgery makes from them, /fcn/runs
# receives snapshots, logs, plots and scores. The code and its venv are read-only; the
# container runs as uid 1000 (`fcn`), or as `--user "$(id -u):$(id -g)"` to own its output.
#
# Caffe is built by caffe-build/build.py with the same pinned Debian source and the same
# patches as the CPU build: CPU_ONLY off, NCCL on, real code for sm_70 (Volta) to sm_90
# (Hopper) plus PTX for compute_90, which newer GPUs compile when the library loads.
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
ARG CUDA_ARCHS="70 75 80 86 89 90"

# ---- build: Caffe from source and the project's virtualenv -------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Only what build.py does not install itself: make and Python (with headers, for
# pycaffe) to run it, and Debian's archive keys, since build.py fetches Caffe's Debian
# source package through its own apt configuration, which trusts apt's keyring folder.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        make python3 python3-venv python3-dev debian-archive-keyring \
    && cp /usr/share/keyrings/debian-archive-keyring.gpg /etc/apt/trusted.gpg.d/ \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /fcn
COPY requirements.txt Makefile ./
RUN make venv

# The build's inputs are build.py and its patches alone, so editing the project's code
# does not rebuild Caffe. FCN_CAFFE_CUDA makes every `make caffe` pick the CUDA build.
ARG CUDA_ARCHS
ENV FCN_CAFFE_CACHE=/opt/caffe \
    FCN_CAFFE_CUDA="${CUDA_ARCHS}"
COPY caffe-build/ caffe-build/
RUN make caffe \
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
# owner of the host folders mounted as volumes (USER names it by number: DL3066).
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid 1000 --shell /bin/bash fcn \
    && mkdir -p /data && chown fcn:fcn /data /fcn/runs /fcn/weights

ARG CUDA_ARCHS
ENV FCN_CAFFE_CACHE=/opt/caffe \
    FCN_CAFFE_CUDA="${CUDA_ARCHS}" \
    FCN_DATA_DIR=/data
USER 1000
WORKDIR /fcn
VOLUME ["/data", "/fcn/weights", "/fcn/runs"]
CMD ["make", "help"]
