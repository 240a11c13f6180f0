#!/usr/bin/env python3
"""Build BVLC Caffe from source into a cache keyed by everything that shapes the binary.

The default source is Debian's source package `caffe` 1.0.0+git20180821.99bd997-8: BVLC
master at 99bd997 plus Debian's build patches. It is fetched with `apt-get source` through
a private apt configuration under the cache (never /etc/apt) and checked against the
checksums in `debian-source.sha256`. `--src` (or CAFFE_SRC) takes a local BVLC tree or
tarball instead. The project's own patches (`patches/*.patch`) are applied on top.

The result lands in `<cache>/<key>/` where the key hashes the source, the patch set, the
cmake flags and the Python/numpy versions, so a fresh clone reuses a finished build and
only a changed key rebuilds. A lock keeps two builds of one key from colliding. When run
from a virtualenv, a `.pth` file in its site-packages makes `import caffe` find the build.

`--cuda "70 75 80 86 89 90"` (or FCN_CAFFE_CUDA) builds for NVIDIA GPUs instead: CPU_ONLY
off, NCCL on for multi-GPU training, cuDNN off (Caffe's own CUDA kernels; BVLC Caffe calls
cuDNN functions that cuDNN 8 removed). cuBLAS, cuRAND and NCCL are taken from the CUDA
toolkit and system folders, or from `--cuda-libs` prefixes such as pip wheels' folders.
"""

import argparse
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PATCH_DIR = HERE / 'patches'
CHECKSUMS = HERE / 'debian-source.sha256'
DEBIAN_PACKAGE = 'caffe'
DEBIAN_VERSION = '1.0.0+git20180821.99bd997-8'
DEBIAN_SUITE = 'bullseye'
DEFAULT_MIRROR = 'http://deb.debian.org/debian'
DEFAULT_CACHE = Path.home() / '.cache' / 'fcn-caffe'
PTH_NAME = 'fcn-caffe.pth'

SYSTEM_PACKAGES = [
    'cmake', 'g++', 'make', 'dpkg-dev', 'patch',
    'libboost-system-dev', 'libboost-thread-dev', 'libboost-filesystem-dev',
    'libboost-python-dev', 'libgoogle-glog-dev', 'libgflags-dev',
    'libprotobuf-dev', 'protobuf-compiler', 'libhdf5-dev', 'libopenblas-dev',
]
# pycaffe's test_draw renders with Graphviz's `dot`.
TEST_PACKAGES = ['graphviz']
# Caffe's C++ suite without the tests that need a GPU.
CPP_TEST_FILTER = '-*GPU*'

OPTIONAL_FEATURES = {
    'opencv': ('USE_OPENCV', ['libopencv-dev']),
    'leveldb': ('USE_LEVELDB', ['libleveldb-dev', 'libsnappy-dev']),
    'lmdb': ('USE_LMDB', ['liblmdb-dev']),
}


# What a GPU build links beyond the CUDA runtime: library -> (its header, the cmake cache
# entry naming the library file, the entry naming its include folder if Caffe has one).
CUDA_LIBRARIES = {
    'cublas': ('cublas_v2.h', 'CUDA_cublas_LIBRARY', None),
    'curand': ('curand.h', 'CUDA_curand_LIBRARY', None),
    'nccl': ('nccl.h', 'NCCL_LIBRARIES', 'NCCL_INCLUDE_DIR'),
}


class BuildError(SystemExit):
    def __init__(self, message):
        super().__init__(f'caffe-build: error: {message}')


def say(message):
    print(f'caffe-build: {message}', flush=True)


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(root):
    """Hash a source tree's paths and contents, skipping VCS and build output."""
    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob('*')):
        rel = path.relative_to(root)
        if rel.parts[0] in ('.git', 'build') or not path.is_file():
            continue
        digest.update(str(rel).encode() + b'\0' + sha256_file(path).encode())
    return digest.hexdigest()


def run(cmd, log=None, **kwargs):
    """Run a command; with `log`, append its output there and fail with the log's tail."""
    if log is None:
        return subprocess.run(cmd, check=True, **kwargs)
    with open(log, 'a') as f:
        f.write(f'\n$ {shlex.join(map(str, cmd))}\n')
        f.flush()
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kwargs)
    if result.returncode != 0:
        tail = Path(log).read_text(errors='replace').splitlines()[-40:]
        raise BuildError(f'`{shlex.join(map(str, cmd))}` failed (exit {result.returncode}).\n'
                         f'Full log: {log}\nLast lines:\n' + '\n'.join(tail))
    return result


# --- the interpreter the build is for -------------------------------------------------

def python_info():
    import numpy
    libdir = sysconfig.get_config_var('LIBDIR') or ''
    library = Path(libdir) / (sysconfig.get_config_var('LDLIBRARY') or '')
    return {
        'executable': sys.executable,
        'version': f'{sys.version_info.major}.{sys.version_info.minor}',
        'include': sysconfig.get_paths()['include'],
        'library': str(library),
        'numpy': numpy.__version__.split('.')[0],
    }


def multiarch():
    """Debian's multiarch tuple (x86_64-linux-gnu), or '' off Debian-like systems."""
    try:
        return subprocess.run(['gcc', '-print-multiarch'], capture_output=True,
                               text=True).stdout.strip()
    except FileNotFoundError:
        return ''


def library_dirs():
    dirs = ['/usr/lib', '/usr/local/lib', '/lib']
    arch = multiarch()
    if arch:
        dirs[:0] = [f'/usr/lib/{arch}', f'/lib/{arch}']
    return [Path(d) for d in dirs if Path(d).is_dir()]


def check_boost_python(version):
    """Caffe links Boost.Python, which is built for one Python version: it must match."""
    wanted = 'libboost_python' + version.replace('.', '')
    found = sorted({p.name.split('.so')[0] for d in library_dirs()
                    for p in d.glob('libboost_python3*.so*')})
    if any(name == wanted for name in found):
        return
    available = ', '.join(f'{n[15]}.{n[16:]}' for n in found if n[15:].isdigit()) or 'none'
    raise BuildError(
        f'Python {version} ({sys.executable}) needs Boost.Python for Python {version} '
        f'({wanted}.so), but this system has Boost.Python for: {available}. '
        f'Make the project with a python3 of a matching version '
        f'(e.g. `make PYTHON=python{available.split(",")[0]}`), '
        f'or install Boost.Python built for Python {version}.')


# --- system packages ------------------------------------------------------------------

def missing_packages(packages):
    missing = []
    for package in packages:
        result = subprocess.run(['dpkg-query', '-W', '-f=${Status}', package],
                                capture_output=True, text=True)
        if 'install ok installed' not in result.stdout:
            missing.append(package)
    return missing


def ensure_system_packages(packages):
    if shutil.which('dpkg-query') is None or shutil.which('apt-get') is None:
        say('no apt on this system: make sure these (Debian names) or equivalents are '
            'installed: ' + ' '.join(packages))
        return
    missing = missing_packages(packages)
    if not missing:
        return
    install = ['apt-get', 'install', '-y', '--no-install-recommends'] + missing
    if os.geteuid() == 0:
        prefix = []
    elif shutil.which('sudo') and subprocess.run(['sudo', '-n', 'true'],
                                                 capture_output=True).returncode == 0:
        prefix = ['sudo']
    else:
        raise BuildError('missing system packages. Run:\n  sudo apt-get update && sudo '
                         + shlex.join(install))
    say('installing system packages: ' + ' '.join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    run(prefix + ['apt-get', 'update', '-q'], env=env, stdout=subprocess.DEVNULL)
    run(prefix + install, env=env, stdout=subprocess.DEVNULL)


# --- source -------------------------------------------------------------------------

def expected_debian_files():
    entries = [line.split() for line in CHECKSUMS.read_text().splitlines() if line.strip()]
    return {name: digest for digest, name in entries}


def fetch_debian_source(cache, mirror):
    """Download the pinned Debian source package (once) and verify every file."""
    downloads = cache / 'downloads'
    downloads.mkdir(parents=True, exist_ok=True)
    expected = expected_debian_files()
    for name, digest in expected.items():
        path = downloads / name
        if path.exists() and sha256_file(path) != digest:
            say(f'{path} does not match its recorded checksum; fetching it again')
            path.unlink()
    if all((downloads / name).exists() for name in expected):
        return downloads
    apt = cache / 'apt'
    for sub in ('lists/partial', 'cache/archives/partial', 'sources.list.d'):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / 'sources.list').write_text(f'deb-src {mirror} {DEBIAN_SUITE} main\n')
    options = []
    for key, value in [('Dir::Etc::SourceList', apt / 'sources.list'),
                       ('Dir::Etc::SourceParts', apt / 'sources.list.d'),
                       ('Dir::State::Lists', apt / 'lists'),
                       ('Dir::Cache', apt / 'cache'),
                       ('APT::Sandbox::User', 'root' if os.geteuid() == 0 else '')]:
        if value != '':
            options += ['-o', f'{key}={value}']
    say(f'fetching Debian source package {DEBIAN_PACKAGE} {DEBIAN_VERSION} from {mirror}')
    log = cache / 'logs' / 'fetch.log'
    log.parent.mkdir(exist_ok=True)
    run(['apt-get', *options, 'update'], log=log)
    run(['apt-get', *options, 'source', '--download-only',
         f'{DEBIAN_PACKAGE}={DEBIAN_VERSION}'], log=log, cwd=downloads)
    for name, digest in expected.items():
        actual = sha256_file(downloads / name)
        if actual != digest:
            (downloads / name).unlink()
            raise BuildError(f'{downloads / name}: sha256 {actual} differs from the recorded '
                             f'{digest} ({CHECKSUMS}); the download was deleted, run again '
                             f'or point CAFFE_DEBIAN_MIRROR at another mirror')
    return downloads


def source_identity(src):
    if src is None:
        return 'debian:' + hashlib.sha256(CHECKSUMS.read_bytes()).hexdigest()
    src = Path(src)
    if src.is_dir():
        return 'tree:' + sha256_tree(src)
    if src.is_file():
        return 'tarball:' + sha256_file(src)
    raise BuildError(f'CAFFE_SRC={src} is neither a Caffe source tree nor a tarball')


def unpack_source(src, cache, mirror, dest, log):
    """Lay the source tree out at `dest` (a path that does not exist yet)."""
    if src is None:
        downloads = fetch_debian_source(cache, mirror)
        dsc = next(n for n in expected_debian_files() if n.endswith('.dsc'))
        run(['dpkg-source', '--no-check', '-x', downloads / dsc, dest], log=log)
        return
    src = Path(src)
    if src.is_dir():
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns('.git', 'build'))
        return
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp, tarfile.open(src) as tar:
        tar.extractall(tmp, filter='data')
        entries = list(Path(tmp).iterdir())
        top = entries[0] if len(entries) == 1 and entries[0].is_dir() else Path(tmp)
        shutil.move(str(top), dest)
    if not (dest / 'CMakeLists.txt').exists():
        raise BuildError(f'{src} does not unpack to a Caffe source tree (no CMakeLists.txt)')


def apply_patches(tree, log):
    for patch in sorted(PATCH_DIR.glob('*.patch')):
        run(['patch', '-p1', '--forward', '--batch', '-i', patch], log=log, cwd=tree)


# --- configure, build, install ------------------------------------------------------

# The BLAS libcaffe links (--blas): name -> (Debian package, library under
# /usr/lib/<multiarch>/). The default is OpenBLAS's OpenMP build, so that it and Caffe's
# own OpenMP loops share one thread pool: with the pthread build the two pools spin-wait
# against each other, and the toy nets trained 3.6-5.4x slower (BENCHMARKS.md, which
# compares all of these). Caffe is compiled against OpenBLAS's cblas.h (libopenblas-dev),
# the standard CBLAS that every one of them exports.
BLAS_LIBRARIES = {
    'openblas': ('libopenblas0-openmp', 'openblas-openmp/libopenblas.so.0'),
    'openblas-pthread': ('libopenblas0-pthread', 'openblas-pthread/libopenblas.so.0'),
    'blis': ('libblis4-openmp', 'blis-openmp/libblis.so.4'),
}
DEFAULT_BLAS = 'openblas'


def blas_flags(blas):
    """Link the chosen BLAS by its path; it is found at run time through the rpath
    (Caffe's cmake keeps link folders in it), and the system's libblas/libopenblas
    alternatives are left as they are. Off Debian, cmake's own search for OpenBLAS stands."""
    arch = multiarch()
    if not arch:
        return {}
    return {'OpenBLAS_LIB': f'/usr/lib/{arch}/{BLAS_LIBRARIES[blas][1]}'}


def cmake_flags(python, features, extra, cuda=None, blas=DEFAULT_BLAS):
    """The cmake cache entries of a build; `cuda` (from `cuda_flags`) makes it a GPU build."""
    flags = {
        'CMAKE_BUILD_TYPE': 'Release',
        'CPU_ONLY': 'ON',
        'BLAS': 'Open',
        # The im2col/col2im patch shares its loops among the cores with OpenMP.
        'USE_OPENMP': 'ON',
        **blas_flags(blas),
        'BUILD_python': 'ON',
        'BUILD_python_layer': 'ON',
        'BUILD_docs': 'OFF',
        'BUILD_matlab': 'OFF',
        'python_version': python['version'],
        'PYTHON_EXECUTABLE': python['executable'],
        'PYTHON_INCLUDE_DIR': python['include'],
        'PYTHON_LIBRARY': python['library'],
    }
    for feature, (option, _) in OPTIONAL_FEATURES.items():
        flags[option] = 'ON' if feature in features else 'OFF'
    flags.update(cuda or {})
    for item in extra:
        name, sep, value = item.partition('=')
        if not sep:
            raise BuildError(f'--cmake {item!r}: expected NAME=VALUE')
        flags[name] = value
    return flags


def cuda_flags(archs, ptx=None, lib_prefixes=()):
    """cmake entries for a GPU build: real architectures `archs` ("70 75 ...") plus PTX for
    `ptx` (default: the newest of them) so that newer GPUs JIT-compile it."""
    bins = archs.replace(',', ' ').split()
    if not bins or not all(arch.isdigit() for arch in bins + [ptx or '0']):
        raise BuildError(f'--cuda {archs!r} --cuda-ptx {ptx!r}: expected compute capabilities '
                         'without dots, e.g. --cuda "70 75 80 86 89 90" --cuda-ptx 90')
    flags = {
        'CPU_ONLY': 'OFF',
        'USE_CUDNN': 'OFF',
        'USE_NCCL': 'ON',
        'CUDA_ARCH_NAME': 'Manual',
        'CUDA_ARCH_BIN': ' '.join(bins),
        'CUDA_ARCH_PTX': ptx or max(bins, key=int),
    }
    include_dirs, used = [], set()
    for name, (header, library_entry, include_entry) in CUDA_LIBRARIES.items():
        found = find_cuda_library(name, header, lib_prefixes)
        if found is None:
            continue  # cmake looks in the CUDA toolkit and the system folders
        prefix, library = found
        used.add(prefix)
        flags[library_entry] = str(library)
        if include_entry:
            flags[include_entry] = str(prefix / 'include')
        elif prefix / 'include' not in include_dirs:
            include_dirs.append(prefix / 'include')
    unused = [str(p) for p in map(Path, lib_prefixes) if p not in used]
    if unused:
        raise BuildError(f'--cuda-libs {" ".join(unused)}: holds none of '
                         f'{", ".join(CUDA_LIBRARIES)} as include/<header> and lib/lib<name>.so* '
                         "(expected e.g. a pip wheel's nvidia/cu13 or nvidia/nccl folder)")
    if include_dirs:
        # Host code (common.hpp) and nvcc both include cublas_v2.h and curand.h.
        flags['CMAKE_CXX_FLAGS'] = ' '.join(f'-isystem {d}' for d in include_dirs)
        flags['CUDA_NVCC_FLAGS'] = ';'.join(f'-isystem;{d}' for d in include_dirs)
    return flags


def find_cuda_library(name, header, prefixes):
    """(prefix, library file) of `name` from the first prefix holding it and its header.

    Wheels ship only the versioned file (libcublas.so.13): linking that by its full path
    records its soname, so no unversioned link is needed."""
    for prefix in map(Path, prefixes):
        if not (prefix / 'include' / header).is_file():
            continue
        for libdir in ('lib', 'lib64'):
            files = sorted((prefix / libdir).glob(f'lib{name}.so*'), key=lambda f: len(f.name))
            if files:
                return prefix, files[0]
    return None


def build_key(identity, flags, python):
    patches = {p.name: sha256_file(p) for p in sorted(PATCH_DIR.glob('*.patch'))}
    # The interpreter's path does not change the binary; its version and numpy's ABI do.
    keyed_flags = {k: v for k, v in flags.items() if k != 'PYTHON_EXECUTABLE'}
    material = json.dumps({'source': identity, 'patches': patches, 'flags': keyed_flags,
                           'python': python['version'], 'numpy': python['numpy']},
                          sort_keys=True)
    digest = hashlib.sha256(material.encode()).hexdigest()[:16]
    flavour = 'cpu' if flags.get('CPU_ONLY') == 'ON' else 'cuda'
    return f'py{python["version"].replace(".", "")}-{flavour}-{digest}'


def find_pycaffe(prefix):
    for so in sorted(prefix.rglob('_caffe*.so')):
        if so.parent.name == 'caffe':
            return so.parent.parent
    raise BuildError(f'the install under {prefix} has no caffe/_caffe.so: '
                     'was Caffe configured without Python (Boost.Python not found)?')


def build(src, cache, mirror, flags, key, jobs, python):
    target = cache / key
    log = cache / 'logs' / f'{key}.log'
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f'build of {key} started {time.ctime()}\n')
    # Under the lock, anything left for this key is from a build that died midway.
    for leftover in [target, *cache.glob(f'{key}.*.work')]:
        shutil.rmtree(leftover, ignore_errors=True)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix=f'{key}.', suffix='.work', dir=cache))
    try:
        tree = work / 'src'
        unpack_source(src, cache, mirror, tree, log)
        apply_patches(tree, log)
        builddir = work / 'build'
        builddir.mkdir()
        prefix = target / 'prefix'
        configure(tree, builddir, prefix, flags, log)
        say(f'compiling with {jobs} jobs; this takes several minutes (log: {log})')
        run(['cmake', '--build', builddir, '--', f'-j{jobs}'], log=log)
        run(['cmake', '--build', builddir, '--target', 'install'], log=log)
        keep_pycaffe_tests(tree, target / 'source')
        pythonpath = find_pycaffe(prefix)
        run([python['executable'], '-c', 'import caffe'], log=log,
            env=dict(os.environ, PYTHONPATH=str(pythonpath), GLOG_minloglevel='2'))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = {
        'key': key, 'source': source_label(src), 'flags': flags,
        'python': python['version'], 'pythonpath': str(pythonpath),
        'tests': str(target / 'source' / 'python' / 'caffe' / 'test'), 'log': str(log),
        'build_seconds': round(time.time() - started), 'built': time.ctime(),
    }
    write_atomically(target / 'build-info.json', json.dumps(info, indent=2) + '\n')
    say(f'built {key} in {info["build_seconds"]} s')
    return info


def configure(tree, builddir, prefix, flags, log):
    say(f'configuring (log: {log})')
    run(['cmake', '-S', tree, '-B', builddir, f'-DCMAKE_INSTALL_PREFIX={prefix}',
         *[f'-D{k}={v}' for k, v in flags.items()]], log=log)


def cpp_tests(src, cache, mirror, flags, key, jobs):
    """Caffe's C++ test binary for build `key`: the same source, patches and cmake flags,
    compiled once into <cache>/<key>/cpp-tests/ (beside the build it tests). Returns
    that folder.

    The binary links a libcaffe compiled there from those same inputs, and stays where it
    was compiled, beside the source tree whose test data the tests read."""
    folder = cache / key / 'cpp-tests'
    done = folder / 'compiled'
    if done.exists():
        return folder
    log = cache / 'logs' / f'{key}-cpp-tests.log'
    with open(cache / f'{key}.cpp-tests.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return folder
        shutil.rmtree(folder, ignore_errors=True)  # left by a compile that died midway
        folder.mkdir(parents=True)
        log.write_text(f'C++ tests of {key} started {time.ctime()}\n')
        started = time.time()
        unpack_source(src, cache, mirror, folder / 'src', log)
        apply_patches(folder / 'src', log)
        configure(folder / 'src', folder / 'build', folder / 'unused-prefix', flags, log)
        say(f'compiling Caffe and its C++ tests with {jobs} jobs; about 10 minutes on 2 '
            f'cores (log: {log})')
        run(['cmake', '--build', folder / 'build', '--target', 'test.testbin', '--',
             f'-j{jobs}'], log=log)
        for objects in (folder / 'build').rglob('*.o'):
            objects.unlink()
        write_atomically(done, f'{round(time.time() - started)} s, {time.ctime()}\n')
    return folder


def run_cpp_tests(folder):
    """Caffe's C++ suite on the CPU: every test but the GPU ones, run from the source
    tree as Caffe's `make runtest` does (tests open src/caffe/test/test_data/...)."""
    binary = folder / 'build' / 'test' / 'test.testbin'
    say(f'running {binary} --gtest_filter={CPP_TEST_FILTER}')
    return subprocess.run([binary, f'--gtest_filter={CPP_TEST_FILTER}'],
                          cwd=folder / 'src').returncode


def keep_pycaffe_tests(tree, dest):
    """Keep pycaffe's tests with the net definitions test_draw reads, at their places."""
    shutil.copytree(tree / 'python' / 'caffe' / 'test', dest / 'python' / 'caffe' / 'test')
    for folder in ('models', 'examples'):
        for prototxt in (tree / folder).rglob('*.prototxt'):
            copy = dest / prototxt.relative_to(tree)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(prototxt, copy)


def source_label(src):
    return f'Debian {DEBIAN_PACKAGE} {DEBIAN_VERSION}' if src is None else str(src)


def write_atomically(path, text):
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def install_pth(pythonpath):
    """Point the running virtualenv at the build, so its python imports caffe."""
    if sys.prefix == sys.base_prefix:
        say(f'not in a virtualenv: add {pythonpath} to PYTHONPATH to import caffe')
        return
    pth = Path(sysconfig.get_paths()['purelib']) / PTH_NAME
    # Left as is when current, so that a venv its user cannot write to (the Docker image
    # run under another uid) still works.
    if not pth.exists() or pth.read_text() != f'{pythonpath}\n':
        write_atomically(pth, f'{pythonpath}\n')


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--src', default=os.environ.get('CAFFE_SRC') or None,
                        help='local BVLC Caffe source tree or tarball '
                             '(default: env CAFFE_SRC, else the pinned Debian source)')
    parser.add_argument('--cache', type=Path,
                        default=Path(os.environ.get('FCN_CAFFE_CACHE') or DEFAULT_CACHE),
                        help='build cache (default: env FCN_CAFFE_CACHE, else %(default)s)')
    parser.add_argument('--mirror', default=os.environ.get('CAFFE_DEBIAN_MIRROR')
                        or DEFAULT_MIRROR, help='Debian mirror for the source package')
    parser.add_argument('--with', dest='features', action='append', default=[],
                        choices=sorted(OPTIONAL_FEATURES),
                        help='also build an optional Caffe feature (repeatable)')
    parser.add_argument('--cuda', metavar='ARCHS', default=os.environ.get('FCN_CAFFE_CUDA') or None,
                        help='build for NVIDIA GPUs of these compute capabilities, e.g. '
                             '"70 75 80 86 89 90" (CPU_ONLY off, NCCL on, cuDNN off; '
                             'default: env FCN_CAFFE_CUDA, else a CPU-only build)')
    parser.add_argument('--cuda-ptx', metavar='ARCH',
                        help='embed PTX for this compute capability (default: the newest '
                             'of --cuda), so that newer GPUs compile it at load time')
    parser.add_argument('--cuda-libs', action='append', default=[], type=Path, metavar='DIR',
                        help='a folder with include/ and lib/ of cuBLAS, cuRAND or NCCL outside '
                             "the CUDA toolkit, e.g. a pip wheel's nvidia/cu13 (repeatable)")
    parser.add_argument('--blas', choices=sorted(BLAS_LIBRARIES),
                        default=os.environ.get('FCN_CAFFE_BLAS') or DEFAULT_BLAS,
                        help="the BLAS Caffe links, from Debian's packages "
                             '(default: env FCN_CAFFE_BLAS, else %(default)s; '
                             'BENCHMARKS.md compares them); part of the cache key')
    parser.add_argument('--cmake', action='append', default=[], metavar='NAME=VALUE',
                        help='extra cmake cache entry; part of the cache key (repeatable)')
    parser.add_argument('-j', '--jobs', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--rebuild', action='store_true',
                        help='build again even if the cache holds this key')
    parser.add_argument('--no-pth', action='store_true',
                        help='do not point the running virtualenv at the build')
    parser.add_argument('--patches', type=Path, default=PATCH_DIR, metavar='DIR',
                        help='the folder of *.patch files to apply, for trying a patch set '
                             '(default: %(default)s); part of the cache key')
    parser.add_argument('--info', action='store_true',
                        help='print the build record (JSON) of the build in use')
    parser.add_argument('--test', action='store_true',
                        help="run Caffe's own pycaffe test suite against the build")
    parser.add_argument('--test-cpp', action='store_true',
                        help="run Caffe's own C++ test suite (CPU tests) against the build, "
                             'compiling it first if the cache has none for this build '
                             '(about 10 minutes on 2 cores)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    global PATCH_DIR
    PATCH_DIR = args.patches.resolve()
    if not PATCH_DIR.is_dir():
        raise BuildError(f'--patches {args.patches}: no such folder')
    if args.blas not in BLAS_LIBRARIES:
        raise BuildError(f'FCN_CAFFE_BLAS={args.blas}: expected one of '
                         f'{", ".join(sorted(BLAS_LIBRARIES))}')
    python = python_info()
    if (args.cuda_ptx or args.cuda_libs) and not args.cuda:
        raise BuildError('--cuda-ptx and --cuda-libs need --cuda ARCHS (or FCN_CAFFE_CUDA)')
    cuda = cuda_flags(args.cuda, args.cuda_ptx, args.cuda_libs) if args.cuda else None
    flags = cmake_flags(python, args.features, args.cmake, cuda, args.blas)
    packages = (SYSTEM_PACKAGES + [BLAS_LIBRARIES[args.blas][0]]
                + [p for f in args.features for p in OPTIONAL_FEATURES[f][1]])
    key = build_key(source_identity(args.src), flags, python)
    record = args.cache / key / 'build-info.json'
    if args.rebuild or not record.exists():
        args.cache.mkdir(parents=True, exist_ok=True)
        with open(args.cache / f'{key}.lock', 'w') as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say(f'another build of {key} is running; waiting for it')
                fcntl.flock(lock, fcntl.LOCK_EX)
            if args.rebuild or not record.exists():
                ensure_system_packages(packages)
                check_boost_python(python['version'])
                build(args.src, args.cache, args.mirror, flags, key, args.jobs, python)
    info = json.loads(record.read_text())
    if not args.no_pth:
        install_pth(info['pythonpath'])
    if args.info:
        print(json.dumps(info, indent=2))
    else:
        say(f'using {args.cache / key}')
    if args.test:
        sys.exit(run_pycaffe_tests(info))
    if args.test_cpp:
        sys.exit(run_cpp_tests(cpp_tests(args.src, args.cache, args.mirror, flags, key,
                                         args.jobs)))


def run_pycaffe_tests(info):
    """Caffe's python/caffe/test, run from a scratch folder so `caffe` is the build's."""
    ensure_system_packages(TEST_PACKAGES)
    env = dict(os.environ, PYTHONPATH=info['pythonpath'], GLOG_minloglevel='2')
    with tempfile.TemporaryDirectory() as scratch:
        return subprocess.run([sys.executable, '-m', 'unittest', 'discover', '-s',
                               info['tests'], '-t', info['tests']],
                              cwd=scratch, env=env).returncode


if __name__ == '__main__':
    main()
