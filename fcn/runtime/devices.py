"""CPU or GPU: the command-line flags, and the checks that run before Caffe is asked.

Caffe aborts the whole process from glog when it is switched to a GPU it cannot use (a
CPU-only build, no driver, a bad device id). The checks here find those cases first and
fail with a message that says which one it is and what to do.
"""
import ctypes
import importlib
import mmap
import os
import re
from pathlib import Path

from fcn.runtime import threads
from fcn.nets import UsageError


def add_device_args(parser, multi_gpu=False):
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--cpu', action='store_true',
                       help='run on the CPU (the default), on the BLAS chosen for it: MKL on '
                            "Intel CPUs, Debian's OpenBLAS elsewhere; env "
                            'FCN_BLAS=auto|mkl|default overrides (solve/caffe_env.py)')
    group.add_argument('--gpu', type=int, metavar='N', help='run on GPU N')
    if multi_gpu:
        group.add_argument('--gpus', type=parse_gpu_list, metavar='0,1,...',
                           help='train on several GPUs at once, one process each (NCCL)')


def parse_gpu_list(text):
    try:
        gpus = [int(part) for part in text.split(',')]
    except ValueError:
        gpus = []
    if not gpus or len(set(gpus)) != len(gpus) or min(gpus) < 0:
        import argparse
        raise argparse.ArgumentTypeError(
            f'{text!r} is not a comma-separated list of distinct GPU ids, e.g. 0,1')
    return gpus


def loaded_library(name_pattern):
    """Path of a shared library this process has mapped, e.g. libcaffe.so (Linux)."""
    try:
        maps = Path('/proc/self/maps').read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split()[-1]
        if re.search(name_pattern, Path(path).name):
            return path
    return None


def caffe_has_cuda():
    """Whether the imported Caffe was built with CUDA (not CPU_ONLY).

    A CUDA build of libcaffe calls cuBLAS and cuRAND (every Caffe context creates their
    handles), so its symbol names include cublasCreate_v2 and curandCreateGenerator; a
    CPU_ONLY build has neither. Reading the library beats asking Caffe, which aborts.
    """
    importlib.import_module('caffe')  # maps libcaffe into this process
    library = loaded_library(r'^libcaffe.*\.so')
    if library is None:
        return False
    with open(library, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m.find(b'cublasCreate_v2') >= 0 or m.find(b'curandCreateGenerator') >= 0


def cuda_device_count():
    """Devices the NVIDIA driver reports, or (0, why) when there is no usable driver."""
    try:
        cuda = ctypes.CDLL('libcuda.so.1')
    except OSError:
        return 0, 'no NVIDIA driver on this machine (libcuda.so.1 not found)'
    status = cuda.cuInit(0)
    if status != 0:
        return 0, f'the NVIDIA driver failed to initialise (cuInit error {status})'
    count = ctypes.c_int(0)
    status = cuda.cuDeviceGetCount(ctypes.byref(count))
    if status != 0:
        return 0, f'the NVIDIA driver cannot count devices (cuDeviceGetCount error {status})'
    return count.value, f'{count.value} GPU(s) visible'


def check_gpus(gpus, need_nccl=False, has_cuda=caffe_has_cuda, device_count=cuda_device_count,
               has_nccl=None):
    """Fail clearly unless every GPU id in `gpus` can be used by this Caffe build."""
    flag = '--gpus' if need_nccl else '--gpu'
    asked = ','.join(map(str, gpus))
    if not has_cuda():
        raise UsageError(f'{flag} {asked}: this Caffe build is CPU-only (built with CPU_ONLY) '
                         f'and has no GPU support. Use --cpu, or train in the CUDA image '
                         f'(see the README: docker build, docker run --gpus all).')
    if need_nccl:
        if has_nccl is None:
            import caffe
            has_nccl = caffe.has_nccl
        if not has_nccl():
            raise UsageError(f'--gpus {asked}: this Caffe build has no NCCL, which multi-GPU '
                             f'training needs. Rebuild Caffe with USE_NCCL=ON (the CUDA image '
                             f'does), or train on one GPU with --gpu N.')
    count, why = device_count()
    missing = [g for g in gpus if g >= count]
    if missing:
        raise UsageError(f'{flag} {asked}: GPU {missing[0]} is not usable: {why}.')


# NCCL's processes pass data through files in /dev/shm, of which Docker gives a container
# 64 MB. NCCL's advice for containers is --shm-size=1g; with less than half of that free,
# training stops before it starts rather than in NCCL's set-up.
SHARED_MEMORY_ADVICE = '--shm-size=1g'
SHARED_MEMORY_MINIMUM = 512 << 20


def check_shared_memory(gpus, shm='/dev/shm', minimum=SHARED_MEMORY_MINIMUM):
    """Fail clearly unless multi-GPU training on `gpus` has the shared memory NCCL needs."""
    if len(gpus) < 2:
        return
    try:
        stats = os.statvfs(shm)
        free = stats.f_bavail * stats.f_frsize
    except OSError as e:
        free, why = 0, f'cannot be used ({e.strerror})'
    else:
        why = f'has {free / 2**20:.0f} MiB free'
    if free < minimum:
        raise UsageError(
            f'--gpus {",".join(map(str, gpus))}: {shm} {why}; training on several GPUs needs '
            f'at least {minimum >> 20} MiB there, where NCCL passes data between the '
            f'processes (Docker gives a container 64 MB). Start the container with '
            f'{SHARED_MEMORY_ADVICE} (or --ipc=host), as the README\'s multi-GPU command does; '
            f'outside Docker, enlarge it: mount -o remount,size=1G {shm}')


def select_device(args):
    """Put Caffe in the mode the flags ask for; the checks run first. On a GPU, Caffe's
    CPU threads do not compute: their count is not fitted (fcn/runtime/threads.py), in this
    process or the ones it starts."""
    import caffe
    gpus = getattr(args, 'gpus', None)
    if gpus or args.gpu is not None:
        os.environ[threads.SWITCH] = '0'
    if gpus:
        check_gpus(gpus, need_nccl=True)
        check_shared_memory(gpus)
    elif args.gpu is not None:
        check_gpus([args.gpu])
        caffe.set_device(args.gpu)
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()
