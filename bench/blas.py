"""Other BLAS libraries under the same Caffe binary, made ready in folders.

Caffe's library asks the loader for `libopenblas.so.0` and calls the CBLAS functions in
CAFFE_CBLAS. A folder whose `libopenblas.so.0` provides them swaps in another BLAS without
rebuilding Caffe, two ways: searched first (LD_LIBRARY_PATH, with FCN_BLAS=default so that
the tools load no BLAS of their own choice ahead of it), as `python -m bench --blas NAME`
does to time Caffe on it, after checking its outputs against PyTorch; or loaded into a
process before Caffe, as solve/caffe_env.py does with MKL on Intel CPUs. The loader takes
a library already in the process for Caffe's only when `libopenblas.so.0` is that
library's own name (its SONAME), so where the BLAS's file has another name (MKL's
libmkl_rt.so.3, BLIS's libblis.so.4) the folder's `libopenblas.so.0` is a small library
of that name that needs it, and brings its functions along.

The candidates (CANDIDATES):
- Debian's other builds, linked in place: OpenBLAS with its own thread pool and BLIS;
- Intel's MKL from its PyPI wheel: its runtime library exports the standard CBLAS names;
  it is told to thread with GNU OpenMP, Caffe's own runtime;
- the current OpenBLAS from PyPI (scipy-openblas32: 32-bit integers, as Caffe calls it),
  whose functions carry a `scipy_` prefix: a small library of jumps, made here, gives them
  the standard names.

Wheels come through pip, so from the machine's own index or mirror; each is checked
against its pinned SHA-256 and unpacked once into <cache>/blas/<name>. A folder appears
only when complete, so an interrupted preparation starts over cleanly.
"""

import argparse
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from fcn.paths import REPO


def _caffe_build():
    """caffe-build/build.py, which knows Debian's BLAS builds and where Caffe's cache is."""
    spec = importlib.util.spec_from_file_location('caffe_build',
                                                  REPO / 'caffe-build' / 'build.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _caffe_build()
DEFAULT_CACHE = Path(os.environ.get('FCN_CAFFE_CACHE') or BUILD.DEFAULT_CACHE) / 'blas'
# What libcaffe.so imports from its BLAS (`nm -D --undefined-only`); tests check the list
# against the build in use.
CAFFE_CBLAS = tuple(f'cblas_{kind}{name}' for kind in 'sd' for name in
                    ('asum', 'axpy', 'copy', 'dot', 'gemm', 'gemv', 'scal'))
# What the project's tools call to set the thread count (fcn/runtime/threads.py), forwarded too.
THREAD_FUNCTIONS = ('openblas_set_num_threads', 'openblas_get_num_threads')
# The name libcaffe asks the loader for (its DT_NEEDED entry).
CAFFE_LIBRARY = 'libopenblas.so.0'
# The variable the project's tools choose their BLAS by (solve/caffe_env.py reads it).
CHOICE_VARIABLE = 'FCN_BLAS'


class BlasError(Exception):
    """A candidate that cannot be made ready; the message says what to do."""


@dataclass(frozen=True)
class Wheel:
    """A pinned PyPI wheel and the libraries to take from it."""
    requirement: str            # name==version
    sha256: str
    member_dir: str             # folder of the libraries inside the wheel
    libraries: tuple            # file names to unpack from member_dir


@dataclass(frozen=True)
class Candidate:
    """How to make a folder whose libopenblas.so.0 is this BLAS."""
    library: str                # file that becomes libopenblas.so.0 (its name in the folder)
    system: Path = None         # a library installed by Debian, linked in place ...
    package: str = None         # ... from this Debian package (installed when missing)
    wheel: Wheel = None         # or libraries unpacked from a wheel
    prefix: str = ''            # prefix of its CBLAS names, forwarded from the standard ones
    env: dict = field(default_factory=dict)   # variables the library needs at run time
    about: str = ''


MKL_LIBRARIES = tuple(f'libmkl_{part}.so.3' for part in
                      ('rt', 'core', 'intel_lp64', 'gnu_thread', 'sequential',
                       'def', 'mc3', 'avx2', 'avx512', 'avx10'))


def debian_candidates():
    """The BLAS builds `make caffe BLAS=...` can link, other than the default."""
    folder = Path('/usr/lib') / (BUILD.multiarch() or 'x86_64-linux-gnu')
    return {name: Candidate(library=Path(library).name, system=folder / library,
                            package=package, about=f"Debian's {package}")
            for name, (package, library) in BUILD.BLAS_LIBRARIES.items()
            if name != BUILD.DEFAULT_BLAS}


CANDIDATES = {
    **debian_candidates(),
    'mkl': Candidate(
        library='libmkl_rt.so.3',
        wheel=Wheel('mkl==2026.2.1',
                    '76322a3abf512594ab7b4e82cb72df91e4e5d195498769aa8b292373c1ddd6d1',
                    'mkl-2026.2.1.data/data/lib', MKL_LIBRARIES),
        # Intel's own OpenMP runtime is not in the folder; the interface is 32-bit integers.
        env={'MKL_THREADING_LAYER': 'GNU', 'MKL_INTERFACE_LAYER': 'LP64'},
        about="Intel's MKL 2026.2.1 (PyPI), GNU OpenMP threads"),
    'openblas-0.3.34': Candidate(
        library='libscipy_openblas.so',
        wheel=Wheel('scipy-openblas32==0.3.34.481.3',
                    '0595f94cd58c1f8a0d90c975621f4587337a003916b1979e834ebdf2cb5d9504',
                    'scipy_openblas32/lib', ('libscipy_openblas.so',)),
        prefix='scipy_', about='OpenBLAS 0.3.34 (PyPI scipy-openblas32), its own thread pool'),
}


def prepare(name, cache=DEFAULT_CACHE, candidates=CANDIDATES, out=sys.stderr):
    """The folder whose libopenblas.so.0 is candidate `name`, made on first use."""
    if name not in candidates:
        raise BlasError(f'no BLAS candidate {name!r}: choose from {", ".join(candidates)}')
    candidate = candidates[name]
    folder = Path(cache) / name
    if current(folder):
        return folder
    if folder.exists():
        print(f'blas: remaking {folder}: its {CAFFE_LIBRARY} is missing or a link to a '
              "library of another name, which cannot stand in for Caffe's when loaded "
              'ahead of it', file=out)
    if candidate.system is not None and not candidate.system.exists():
        try:
            BUILD.ensure_system_packages([candidate.package])
        except BUILD.BuildError as error:
            raise BlasError(f'{name}: {candidate.system} is missing; {error}') from None
        if not candidate.system.exists():
            raise BlasError(f'{name}: {candidate.system} is missing: install the Debian '
                            f'package {candidate.package}')
    Path(cache).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f'.{name}-', dir=cache))
    try:
        if candidate.wheel is not None:
            wheel = fetch_wheel(candidate.wheel, Path(cache) / 'downloads', out)
            unpack(wheel, candidate.wheel, work)
            target = work / candidate.library
        else:
            target = candidate.system
        if candidate.prefix:
            forwarding_library(work / CAFFE_LIBRARY, target,
                               CAFFE_CBLAS + THREAD_FUNCTIONS, candidate.prefix, work)
        elif target.name == CAFFE_LIBRARY:
            # Debian names its OpenBLAS builds so: a link is already the right name.
            (work / CAFFE_LIBRARY).symlink_to(target)
        else:
            forwarding_library(work / CAFFE_LIBRARY, target, (), '', work)
        work.chmod(0o755)
        place(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(f'blas: {name} ready in {folder}', file=out)
    return folder


def current(folder):
    """Whether `folder` is a finished candidate folder whose libopenblas.so.0 has that
    name as its own: a library made here, or a link to a file of that name. A link to a
    library of another name cannot stand in for Caffe's when loaded ahead of it, so a
    folder holding one is remade."""
    library = Path(folder) / CAFFE_LIBRARY
    if not library.exists():
        return False
    return not library.is_symlink() or Path(os.readlink(library)).name == CAFFE_LIBRARY


def ready(name, cache=DEFAULT_CACHE):
    """Candidate `name`'s folder if it is ready, else None; nothing is fetched or made."""
    folder = Path(cache) / name
    return folder if current(folder) else None


def place(work, folder):
    """Move the finished folder `work` to `folder`. An outdated folder there is set aside
    and removed; one that another process finished meanwhile is kept, and `work` dropped
    (processes that have a folder's libraries loaded keep them: the files stay until
    they exit)."""
    for _ in range(3):
        try:
            work.rename(folder)
            return
        except OSError:
            if current(folder):
                shutil.rmtree(work, ignore_errors=True)
                return
        outdated = Path(tempfile.mkdtemp(prefix=f'.{folder.name}-outdated-',
                                         dir=folder.parent))
        try:
            folder.rename(outdated)
        except FileNotFoundError:
            outdated.rmdir()
            continue
        shutil.rmtree(outdated, ignore_errors=True)
    raise BlasError(f'could not put {work} in place of {folder}: another process keeps '
                    'changing it; try again')


def fetch_wheel(wheel, downloads, out):
    """The wheel's file in `downloads`, fetched by pip once and checked against its SHA-256."""
    downloads.mkdir(parents=True, exist_ok=True)
    name, version = wheel.requirement.split('==')
    stem = f'{name.replace("-", "_")}-{version}-'
    found = [path for path in downloads.glob(stem + '*.whl')
             if BUILD.sha256_file(path) == wheel.sha256]
    if found:
        return found[0]
    print(f'blas: fetching {wheel.requirement} with pip', file=out)
    with tempfile.TemporaryDirectory(dir=downloads) as scratch:
        # pip's progress goes to standard error (file descriptor 2); its errors are kept.
        result = subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--no-deps',
             '--disable-pip-version-check', '--only-binary=:all:', '--dest', scratch,
             wheel.requirement], stdout=2, stderr=subprocess.PIPE, text=True)
        fetched = list(Path(scratch).glob(stem + '*.whl'))
        if result.returncode != 0 or len(fetched) != 1:
            raise BlasError(f'pip could not fetch {wheel.requirement}: '
                            f'{result.stderr.strip()[-600:]}\n'
                            'Check the package index pip is configured with (pip config list).')
        digest = BUILD.sha256_file(fetched[0])
        if digest != wheel.sha256:
            raise BlasError(f'{fetched[0].name} has SHA-256 {digest}, not the pinned '
                            f'{wheel.sha256}: the index serves another file under that '
                            'version; do not use it')
        return Path(shutil.move(str(fetched[0]), downloads / fetched[0].name))


def unpack(path, wheel, folder):
    """The wheel's listed libraries, flat into `folder`."""
    with zipfile.ZipFile(path) as bundle:
        names = set(bundle.namelist())
        for library in wheel.libraries:
            member = f'{wheel.member_dir}/{library}'
            if member not in names:
                raise BlasError(f'{path.name} holds no {member}: the pinned wheel changed '
                                'its layout; update bench/blas.py')
            with bundle.open(member) as source, open(folder / library, 'wb') as target:
                shutil.copyfileobj(source, target, 1 << 20)


def forwarding_library(path, target, functions, prefix, scratch):
    """Build `path`, a shared library named after its file (SONAME) that needs `target` and
    defines each of `functions` as a jump to `prefix + function` in `target`. The jumps
    pass every argument register through untouched, so no signature is needed; the link
    fails if `target` lacks one. With no functions it only needs `target`: the loader
    looks a library's functions up in what it needs too."""
    lines = ['\t.text']
    for function in functions:
        lines += [f'\t.globl {function}', f'\t.type {function}, @function',
                  f'{function}:', f'\tjmp {prefix}{function}@PLT']
    lines.append('\t.section .note.GNU-stack,"",@progbits')
    source = Path(scratch) / 'forward.s'
    source.write_text('\n'.join(lines) + '\n')
    # The target is found beside the library, or where Debian installed it.
    search = '$ORIGIN' if target.parent == path.parent else str(target.parent)
    result = subprocess.run(
        ['gcc', '-shared', '-nostdlib', '-o', str(path), str(source),
         f'-Wl,-soname,{path.name}', '-Wl,--no-undefined', f'-Wl,-rpath,{search}',
         f'-L{target.parent}', '-Wl,--no-as-needed', f'-l:{target.name}'],
        capture_output=True, text=True)
    source.unlink()
    if result.returncode != 0:
        asked = f' (does it define each of {prefix}{functions[0]}...?)' if functions else ''
        raise BlasError(f'could not link the library of Caffe\'s name for {target}{asked}:\n'
                        f'{result.stderr.strip()}')


def library_env(env, folder, extra=None, choice='default'):
    """`env` with `folder` searched first for Caffe's libopenblas.so.0, plus `extra`, and
    FCN_BLAS=`choice` (None: as in `env`): 'default' keeps the project's tools from
    loading the BLAS they would choose themselves ahead of the one found here
    (solve/caffe_env.py)."""
    if not (Path(folder) / CAFFE_LIBRARY).exists():
        raise BlasError(f'{folder} holds no {CAFFE_LIBRARY} (make it a link to the BLAS '
                        'library to try)')
    others = [item for item in env.get('LD_LIBRARY_PATH', '').split(os.pathsep)
              if item and item != str(folder)]
    result = dict(env, **(extra or {}),
                  LD_LIBRARY_PATH=os.pathsep.join([str(folder), *others]))
    if choice is not None:
        result[CHOICE_VARIABLE] = choice
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m bench.blas', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Candidates: ' + '; '.join(f'{name}: {candidate.about}'
                                          for name, candidate in CANDIDATES.items()))
    parser.add_argument('names', nargs='*', metavar='NAME',
                        help='candidates to make ready (default: all; Debian packages '
                             'missing are installed as `make caffe` installs its own)')
    parser.add_argument('--cache', type=Path, default=DEFAULT_CACHE,
                        help='where the folders go (default: %(default)s; FCN_CAFFE_CACHE '
                             'moves it with the Caffe builds)')
    parser.add_argument('--shell', action='store_true',
                        help='print `export` lines that run Caffe on the (one) candidate, '
                             'e.g. eval "$(python -m bench.blas mkl --shell)"; among them '
                             'FCN_BLAS=default, so that the tools load no BLAS of their '
                             'choice ahead of it (solve/caffe_env.py)')
    args = parser.parse_args(argv)
    names = args.names or list(CANDIDATES)
    if args.shell and len(names) != 1:
        parser.error('--shell takes exactly one candidate')
    try:
        for name in names:
            folder = prepare(name, args.cache)
            if args.shell:
                env = library_env(os.environ, folder, CANDIDATES[name].env)
                for key in ('LD_LIBRARY_PATH', *CANDIDATES[name].env, CHOICE_VARIABLE):
                    print(f'export {key}={shlex.quote(env[key])}')
            else:
                extra = ' '.join(f'{key}={value}' for key, value in CANDIDATES[name].env.items())
                print(f'{name}={folder}' + (f'  (with {extra})' if extra else ''))
    except BlasError as error:
        raise SystemExit(f'bench.blas: {error}')


if __name__ == '__main__':
    main()
