#!/usr/bin/env python3
"""Build BVLC Caffe from source into a cache keyed by everything that shapes the binary.

The default source is Debian's source package `caffe` 1.0.0+git20180821.99bd997-8 of
bullseye: BVLC master at 99bd997 plus Debian's build patches. It is fetched with `apt-get
source` through a private apt configuration under the cache (never /etc/apt), from the
Debian mirror this machine's apt configuration names, then from those CAFFE_DEBIAN_MIRROR
names, and checked against the checksums in `debian-source.sha256`; `--fetch DIR` does
only that. `--src` (or CAFFE_SRC) takes a local BVLC tree or tarball instead. The
project's own patches (`patches/*.patch`) are applied on top.

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
import re
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
    """Debian's multiarch tuple (x86_64-linux-gnu) on Debian and its derivatives, else ''.

    Taken from the interpreter's own build configuration, never from a tool such as gcc:
    the cache key and the library search must come out the same whatever is installed
    (the Docker image's runtime stage has no compiler, its build stage has one)."""
    if not Path('/etc/debian_version').exists():
        return ''
    return sysconfig.get_config_var('MULTIARCH') or ''


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
    available = [f'{n[15]}.{n[16:]}' for n in found if n[15:].isdigit()]
    needed = (f'Python {version} ({sys.executable}) needs Boost.Python for Python {version} '
              f'({wanted}.so)')
    if not available:
        folders = ', '.join(map(str, library_dirs()))
        raise BuildError(f'{needed}, but {folders} hold no Boost.Python for Python 3 at all. '
                         f'Install it (Debian: libboost-python-dev), built for Python '
                         f'{version}.')
    raise BuildError(
        f'{needed}, but this system has Boost.Python for: {", ".join(available)}. '
        f'Make the project with a python3 of a matching version '
        f'(e.g. `make PYTHON=python{available[0]}`), '
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


# Where Debian's archive is, on a Debian machine: the entries of its apt configuration for
# its own release (or Debian's development suites) that carry the main component.
APT_ETC = Path('/etc/apt')
OS_RELEASE = Path('/etc/os-release')
DEBIAN_DEVELOPMENT_SUITES = ('testing', 'unstable', 'sid')


def read_os_release(path=OS_RELEASE):
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    release = {}
    for line in lines:
        name, sep, value = line.partition('=')
        if sep and not name.startswith('#'):
            release[name.strip()] = value.strip().strip('"\'')
    return release


def parse_one_line_sources(text):
    """Entries of the one-line format (sources.list, *.list):
    `deb [option=value ...] URI SUITE [COMPONENT ...]`."""
    entries = []
    for line in text.splitlines():
        line = line.split('#', 1)[0].strip()
        match = re.match(r'(deb|deb-src)\s+(?:\[([^\]]*)\]\s*)?(\S+)\s+(\S+)\s*(.*)$', line)
        if not match:
            continue
        kind, options, uri, suite, components = match.groups()
        options = dict(option.partition('=')[::2] for option in (options or '').split())
        entries.append({'types': [kind], 'uris': [uri], 'suites': [suite],
                        'components': components.split(),
                        'signed_by': options.get('signed-by') or None})
    return entries


def parse_deb822_sources(text):
    """Entries of the deb822 format (*.sources): stanzas of `Field: value` lines, separated
    by blank lines, continued on lines that start with white space."""
    entries = []
    for stanza in re.split(r'\n[ \t]*\n', text):
        fields, name = {}, None
        for line in stanza.splitlines():
            if line.startswith('#'):
                continue
            if line[:1] in (' ', '\t') and name:
                fields[name] = (fields[name] + '\n' + line.strip()).strip()
                continue
            name, sep, value = line.partition(':')
            name = name.strip().lower() if sep else None
            if name:
                fields[name] = value.strip()
        if not fields.get('uris') or fields.get('enabled', 'yes').lower() == 'no':
            continue
        entries.append({'types': fields.get('types', '').split(),
                        'uris': fields['uris'].split(),
                        'suites': fields.get('suites', '').split(),
                        'components': fields.get('components', '').split(),
                        'signed_by': fields.get('signed-by') or None})
    return entries


def read_apt_sources(etc=APT_ETC):
    """Every enabled entry of an apt configuration: sources.list, then sources.list.d's
    *.list and *.sources by name, as apt reads them."""
    parts = Path(etc) / 'sources.list.d'
    files = [Path(etc) / 'sources.list'] + sorted(
        p for p in (parts.iterdir() if parts.is_dir() else ())
        if p.suffix in ('.list', '.sources'))
    entries = []
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        parse = parse_deb822_sources if path.suffix == '.sources' else parse_one_line_sources
        entries += parse(text)
    return entries


def debian_mirrors(named=(), etc=APT_ETC, os_release=OS_RELEASE):
    """Where to ask for the pinned source package, in order, as (URI, keyring or None):
    the Debian mirrors this machine's apt configuration names, then the locations `named`
    by the user (CAFFE_DEBIAN_MIRROR), which are signed by the same keyring."""
    release = read_os_release(os_release)
    configured = []
    if release.get('ID') == 'debian':
        suites = {release.get('VERSION_CODENAME'), *DEBIAN_DEVELOPMENT_SUITES} - {None, ''}
        for entry in read_apt_sources(etc):
            if ({'deb', 'deb-src'} & set(entry['types']) and 'main' in entry['components']
                    and suites & set(entry['suites'])):
                signed_by = entry['signed_by']
                # A keyring file; a key written into the entry itself does not fit the
                # one-line entry the fetch writes, which then relies on apt's trusted keys.
                keyring = signed_by if signed_by and signed_by.startswith('/') \
                    and '\n' not in signed_by else None
                configured += [(uri, keyring) for uri in entry['uris']
                               if not uri.startswith('cdrom:')]
    keyring = next((k for _, k in configured if k), None)
    mirrors = {}  # one per mirror, in order, with the keyring any of its entries names
    for uri, key in configured + [(uri, keyring) for uri in named]:
        first_uri, first_key = mirrors.get(uri.rstrip('/'), (uri, None))
        mirrors[uri.rstrip('/')] = (first_uri, first_key or key)
    return list(mirrors.values())


def no_mirror_error(etc=APT_ETC, os_release=OS_RELEASE):
    release = read_os_release(os_release)
    if release.get('ID') == 'debian':
        why = (f"this machine's apt configuration ({etc}/sources.list, {etc}/sources.list.d/) "
               f"names no Debian mirror for {release.get('VERSION_CODENAME') or 'its release'} "
               f"with the main component")
    else:
        why = (f"this machine ({release.get('PRETTY_NAME') or 'no /etc/os-release'}) is not "
               f"Debian, so its apt configuration names no Debian mirror")
    return BuildError(
        f"Caffe's source is Debian's source package {DEBIAN_PACKAGE} {DEBIAN_VERSION} "
        f"({DEBIAN_SUITE}), but {why}. Set CAFFE_DEBIAN_MIRROR to the URL of a Debian mirror "
        f"that carries {DEBIAN_SUITE}, as a sources.list line would name it (several, "
        f"separated by spaces, are tried in order):\n"
        f"  CAFFE_DEBIAN_MIRROR=<Debian mirror URL> make caffe\n"
        f"or set CAFFE_SRC to a BVLC Caffe source tree or tarball:\n"
        f"  CAFFE_SRC=/path/to/caffe make caffe")


def apt_problems(output):
    """The lines of apt's output that say what went wrong."""
    lines = output.splitlines()
    problems = []
    for i, line in enumerate(lines):
        if line.startswith(('E:', 'W:', 'Err:')):
            detail = lines[i + 1].strip() if line.startswith('Err:') and i + 1 < len(lines) \
                and lines[i + 1].startswith(' ') else ''
            problems.append(f'{line} {detail}'.strip())
    return problems


def apt_fetch(uri, keyring, apt, downloads, log):
    """Ask one mirror for the pinned source package through a private apt configuration
    under the cache (never /etc/apt). None when apt got it, else what went wrong."""
    shutil.rmtree(apt / 'lists', ignore_errors=True)
    for sub in ('lists/partial', 'cache/archives/partial', 'sources.list.d'):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    signed_by = f'[signed-by={keyring}] ' if keyring else ''
    (apt / 'sources.list').write_text(f'deb-src {signed_by}{uri} {DEBIAN_SUITE} main\n')
    options = []
    for key, value in [('Dir::Etc::SourceList', apt / 'sources.list'),
                       ('Dir::Etc::SourceParts', apt / 'sources.list.d'),
                       ('Dir::State::Lists', apt / 'lists'),
                       ('Dir::Cache', apt / 'cache'),
                       # A release past its support keeps an expired Release file; the files
                       # are vouched for by the recorded checksums, not by its date.
                       ('Acquire::Check-Valid-Until', 'false'),
                       ('APT::Sandbox::User', 'root' if os.geteuid() == 0 else '')]:
        if value != '':
            options += ['-o', f'{key}={value}']
    problems = []
    for command in (['update'], ['source', '--download-only',
                                 f'{DEBIAN_PACKAGE}={DEBIAN_VERSION}']):
        cmd = ['apt-get', *options, *command]
        result = subprocess.run(cmd, cwd=downloads, capture_output=True, text=True)
        with open(log, 'a') as f:
            f.write(f'\n$ {shlex.join(map(str, cmd))}\n{result.stdout}{result.stderr}')
        # `update` only warns about a mirror it cannot reach; `source` then fails.
        problems += apt_problems(result.stdout + result.stderr)
        if result.returncode != 0:
            first_failure = [p for p in problems if p.startswith('Err:')][:1]
            verdict = [p for p in problems if p.startswith('E:')][-1:]
            return ('; '.join(first_failure + verdict) or
                    f'apt-get {command[0]} exited {result.returncode}')
    return None


def check_downloads(downloads):
    """What is wrong with the pinned files in `downloads` (none: all there and verified).
    A file that differs from its recorded checksum is deleted."""
    problems = []
    for name, digest in expected_debian_files().items():
        path = downloads / name
        if not path.exists():
            problems.append(f'{name} is missing')
            continue
        actual = sha256_file(path)
        if actual != digest:
            path.unlink()
            problems.append(f'{path}: sha256 {actual} differs from the recorded {digest} '
                            f'({CHECKSUMS}); deleted')
    return problems


def fetch_debian_source(cache, mirrors=(), downloads=None, fetch=apt_fetch):
    """The pinned Debian source package in `downloads` (default: the cache's), verified:
    files already there are kept when they match their checksums; the rest are asked of
    each mirror in turn (`debian_mirrors`) until one serves all three."""
    downloads = Path(downloads or cache / 'downloads')
    downloads.mkdir(parents=True, exist_ok=True)
    problems = check_downloads(downloads)
    if not problems:
        return downloads
    for problem in problems:
        if not problem.endswith('is missing'):
            say(f'{problem}; fetching it again')
    candidates = debian_mirrors(mirrors)
    if not candidates:
        raise no_mirror_error()
    if shutil.which('apt-get') is None:
        raise BuildError("fetching Debian's source package needs apt-get, which this machine "
                         'lacks: set CAFFE_SRC to a BVLC Caffe source tree or tarball')
    log = cache / 'logs' / 'fetch.log'
    log.parent.mkdir(parents=True, exist_ok=True)
    tried = []
    for uri, keyring in candidates:
        say(f'fetching Debian source package {DEBIAN_PACKAGE} {DEBIAN_VERSION} from {uri}')
        failure = fetch(uri, keyring, cache / 'apt', downloads, log)
        if failure is None:
            problems = check_downloads(downloads)
            if not problems:
                return downloads
            failure = '; '.join(problems)
        say(f'{uri}: {failure}')
        tried.append(f'  {uri}: {failure}')
    raise BuildError(
        f'no mirror served {DEBIAN_PACKAGE} {DEBIAN_VERSION} ({DEBIAN_SUITE}) with the '
        f'recorded checksums. Tried, in order:\n' + '\n'.join(tried) + '\n'
        f'{DEBIAN_SUITE} may have moved off these mirrors to Debian\'s archive of old '
        f'releases: name mirrors that carry it in CAFFE_DEBIAN_MIRROR (several, separated by '
        f'spaces, are tried after the configured ones), or set CAFFE_SRC to a BVLC Caffe '
        f'source tree or tarball. Full log: {log}')


def source_identity(src):
    if src is None:
        return 'debian:' + hashlib.sha256(CHECKSUMS.read_bytes()).hexdigest()
    src = Path(src)
    if src.is_dir():
        return 'tree:' + sha256_tree(src)
    if src.is_file():
        return 'tarball:' + sha256_file(src)
    raise BuildError(f'CAFFE_SRC={src} is neither a Caffe source tree nor a tarball')


def unpack_source(src, cache, mirrors, dest, log):
    """Lay the source tree out at `dest` (a path that does not exist yet)."""
    if src is None:
        downloads = fetch_debian_source(cache, mirrors)
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


def build(src, cache, mirrors, flags, key, jobs, python):
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
        unpack_source(src, cache, mirrors, tree, log)
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


def cpp_tests(src, cache, mirrors, flags, key, jobs):
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
        unpack_source(src, cache, mirrors, folder / 'src', log)
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
    tree as Caffe's `make runtest` does (tests open src/caffe/test/test_data/...), on the
    BLAS the project's tools choose (with_runtime_env)."""
    binary = folder / 'build' / 'test' / 'test.testbin'
    say(f'running {binary} --gtest_filter={CPP_TEST_FILTER}')
    return subprocess.run(with_runtime_env([binary, f'--gtest_filter={CPP_TEST_FILTER}']),
                          cwd=folder / 'src').returncode


# The project's tools choose the BLAS Caffe runs on when they start, by the CPU or by
# FCN_BLAS (MKL on Intel CPUs), and set the environment for it; where only caffe-build/ is
# present (the Docker image's build stage) there is nothing to choose from.
RUNTIME_ENV_SCRIPT = HERE.parent / 'solve' / 'caffe_env.py'


def with_runtime_env(command):
    """`command` run with the environment the project's tools run Caffe with, so that
    Caffe's own tests test the BLAS that training runs on; as it is where that script
    is absent."""
    if not RUNTIME_ENV_SCRIPT.exists():
        return [str(part) for part in command]
    return [sys.executable, str(RUNTIME_ENV_SCRIPT), '--', *map(str, command)]


def prepare_runtime_blas():
    """Make the BLAS the project's tools will choose ready (MKL on an Intel CPU: its pinned
    wheel fetched through pip once). Where FCN_BLAS is auto this never fails: a BLAS that
    cannot be made ready leaves Caffe on the one it links, with one warning line."""
    if not RUNTIME_ENV_SCRIPT.exists():
        return
    if subprocess.run([sys.executable, str(RUNTIME_ENV_SCRIPT), '--prepare']).returncode:
        raise BuildError('the BLAS FCN_BLAS names could not be made ready (the reason is '
                         'above); unset FCN_BLAS to let the CPU choose')


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
    parser.add_argument('--mirror', dest='mirrors', action='append', metavar='URL',
                        default=os.environ.get('CAFFE_DEBIAN_MIRROR', '').split(),
                        help='a Debian mirror for the source package, tried after the ones '
                             "this machine's apt configuration names (repeatable; default: "
                             'env CAFFE_DEBIAN_MIRROR, space-separated)')
    parser.add_argument('--fetch', metavar='DIR', type=Path,
                        help='only fetch and verify the pinned Debian source files into DIR')
    parser.add_argument('--key', action='store_true',
                        help='print the cache key of this configuration (nothing is built)')
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
    parser.epilog = (
        'The BLAS Caffe runs on is chosen when it runs, by solve/caffe_env.py: MKL on Intel\n'
        "CPUs, Debian's OpenBLAS (the one linked) elsewhere; env FCN_BLAS=auto|mkl|default\n"
        'overrides it. A CPU build makes the chosen one ready (MKL: its pinned wheel, fetched\n'
        'through pip once) and both test suites run on it: FCN_BLAS=mkl ... --test-cpp runs\n'
        "Caffe's C++ tests on MKL on any CPU.")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.fetch:
        # Needs neither numpy nor the patches: the Docker image fetches in a Debian stage.
        fetch_debian_source(args.cache, args.mirrors, args.fetch)
        say(f'the pinned source files are in {args.fetch}, verified')
        return
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
    if args.key:
        print(key)
        return
    record = args.cache / key / 'build-info.json'
    if args.rebuild or not record.exists():
        check_cache_writable(args.cache, key, flags)
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
                build(args.src, args.cache, args.mirrors, flags, key, args.jobs, python)
    info = json.loads(record.read_text())
    if not args.no_pth:
        install_pth(info['pythonpath'])
    if args.info:
        print(json.dumps(info, indent=2))
    else:
        say(f'using {args.cache / key}')
        # A CUDA build computes on its GPU; the CPU's BLAS is left as linked.
        if not args.cuda:
            prepare_runtime_blas()
    if args.test:
        sys.exit(run_pycaffe_tests(info))
    if args.test_cpp:
        sys.exit(run_cpp_tests(cpp_tests(args.src, args.cache, args.mirrors, flags, key,
                                         args.jobs)))


def check_cache_writable(cache, key, flags):
    """Building needs to write the cache. When it cannot (the Docker image, run as its
    user, computing another key than its build stage did), say which builds the cache holds
    and what differs, rather than fail on the lock."""
    existing = cache if cache.exists() else next(p for p in cache.parents if p.exists())
    if os.access(existing, os.W_OK):
        return
    builds = []
    for record in sorted(cache.glob('*/build-info.json')):
        other = json.loads(record.read_text())
        differing = [f'{name}={other["flags"].get(name)!r} there, {flags.get(name)!r} here'
                     for name in sorted(set(flags) | set(other['flags']))
                     if name != 'PYTHON_EXECUTABLE'
                     and flags.get(name) != other['flags'].get(name)]
        builds.append(f'  {other["key"]}: ' + ('; '.join(differing) or 'same cmake flags; '
                      'the source, the patches or the Python/numpy version differ'))
    raise BuildError(
        f'{cache} holds no build of {key} and is not writable, so none can be built. '
        + ('It holds:\n' + '\n'.join(builds) + '\n' if builds else '')
        + 'Build under a writable cache (FCN_CAFFE_CACHE=DIR or --cache DIR); in the Docker '
          'image, rebuild the image: its build stage and its runtime must agree on the key.')


# Caffe's test_coord_map.py asserts with assertEquals, an alias of assertEqual that Python
# 3.12 removed (the Docker image's Python): the runner restores it, so that the tests run
# as written on every Python.
PYCAFFE_TEST_RUNNER = """
import sys, unittest
if not hasattr(unittest.TestCase, 'assertEquals'):
    unittest.TestCase.assertEquals = unittest.TestCase.assertEqual
unittest.main(module=None, argv=['unittest', 'discover', '-s', sys.argv[1], '-t', sys.argv[1]])
"""


def run_pycaffe_tests(info):
    """Caffe's python/caffe/test, run from a scratch folder so `caffe` is the build's."""
    ensure_system_packages(TEST_PACKAGES)
    env = dict(os.environ, PYTHONPATH=info['pythonpath'], GLOG_minloglevel='2')
    with tempfile.TemporaryDirectory() as scratch:
        return subprocess.run(
            with_runtime_env([sys.executable, '-c', PYCAFFE_TEST_RUNNER, info['tests']]),
            cwd=scratch, env=env).returncode


if __name__ == '__main__':
    main()
