"""The environment every Caffe process of the project starts with, and the BLAS it runs on.

Caffe's libraries read these variables once, when they are loaded, so they are set
(unless the user set them) by every tool before it imports caffe: `netfiles` imports this
module first, and so does every command-line tool and the test set-up; the Makefile
exports the same values for whatever else it starts (a test checks they agree).
How many threads Caffe runs is not set here but while it runs (fcn/runtime/threads.py): it
depends on what else the machine is doing.

The BLAS follows the CPU, chosen when this module is imported:
- on an Intel CPU (vendor_id GenuineIntel), Intel's MKL, from the pinned wheel that
  bench/blas.py unpacks into <cache>/blas/mkl (`make caffe` does that on such a machine).
  Its threads are GNU OpenMP's (MKL_THREADING_LAYER=GNU, set here over any other value):
  the one libgomp pool that also runs Caffe's own parallel loops, so neither waits on the
  other's threads and fcn/runtime/threads.py's thread count reaches both. On an Intel Xeon it ran
  FCN-8s's forward pass at 84% of the SGEMM limit, Debian's OpenBLAS at 72%;
- on any other CPU, Debian's OpenBLAS (its OpenMP build) that libcaffe links: on an AMD
  Zen 5 MKL was 1.3x slower, as it runs its generic kernels there.

FCN_BLAS overrides the choice: `auto` (the default) as above; `mkl`; `default`, which
loads nothing ahead of Caffe, so that Caffe runs on whichever libopenblas.so.0 the loader
finds: Debian's OpenMP OpenBLAS, unless LD_LIBRARY_PATH puts another first (as
`python -m bench.blas NAME --shell` does). Where `auto` picks MKL but it is not ready, the
tool says so in one line and runs on the default (setting FCN_BLAS=default, so that its
children say it no more); `mkl` then stops with an error. A CUDA
build (FCN_CAFFE_CUDA, the Docker image) computes on its GPU: `auto` neither fetches MKL
for it nor warns when it is missing.

How: libcaffe asks the loader for `libopenblas.so.0`, and the loader takes a library
already in the process for it when that is the library's own name (SONAME). MKL's folder
holds a small library of that name that needs libmkl_rt.so.3; loading it here, before
caffe is imported, makes MKL Caffe's BLAS, and Debian's OpenBLAS is never loaded. The same
choice reaches the process's children through the variables set here (LD_LIBRARY_PATH
with MKL's folder first, and MKL's own): Caffe's C++ tests, pycaffe's, and scripts that
import caffe without this module.

`python solve/caffe_env.py` (this module's main) says which BLAS Caffe runs on here, and
why; `--prepare` makes the chosen BLAS ready (`make caffe` runs it); `-- COMMAND ...` runs
a command with the environment set (the C++ tests run so).
"""
import argparse
import ctypes
import importlib.util
import os
import sys
import time
from pathlib import Path

from fcn.errors import UsageError, exit_with, run_command

CAFFE_ENV = {
    # Glog's start-up chatter (every layer's set-up) is off unless asked for.
    'GLOG_minloglevel': '2',
}

BLAS_VARIABLE = 'FCN_BLAS'
BLAS_CHOICES = ('auto', 'mkl', 'default')
CPUINFO = Path('/proc/cpuinfo')
# The CPU vendor whose machines get MKL under `auto`.
MKL_VENDOR = 'GenuineIntel'
# Set for CUDA builds of Caffe (caffe-build/build.py, the Docker image).
CUDA_VARIABLE = 'FCN_CAFFE_CUDA'
# The name libcaffe asks the loader for.
CAFFE_BLAS_LIBRARY = 'libopenblas.so.0'
# Beside MKL's folder: why `auto` could not make MKL ready, so that `make caffe` does not
# ask the network again every time it runs.
UNAVAILABLE_SUFFIX = '.unavailable'


class BlasChoiceError(UsageError):
    """A BLAS choice that cannot be followed; the message says what to do."""


def cpu_vendor(cpuinfo=CPUINFO):
    """The CPU's vendor_id in /proc/cpuinfo (GenuineIntel, AuthenticAMD, ...), or None where
    there is none (no such file, or an architecture whose cpuinfo has no vendor_id)."""
    try:
        text = Path(cpuinfo).read_text(errors='replace')
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(':')
        if sep and key.strip() == 'vendor_id':
            return value.strip() or None
    return None


def blas_choice(environ=os.environ, cpuinfo=CPUINFO):
    """('mkl' or 'default', asked): the BLAS to run Caffe on, and whether FCN_BLAS named
    it (rather than `auto` choosing it by the CPU)."""
    value = environ.get(BLAS_VARIABLE, '').strip()
    asked = value.lower() or 'auto'
    if asked not in BLAS_CHOICES:
        raise BlasChoiceError(
            f'{BLAS_VARIABLE}={value!r} is not a BLAS choice: set it to auto (MKL on Intel '
            "CPUs, Debian's OpenBLAS elsewhere), mkl or default, or unset it")
    if asked != 'auto':
        return asked, True
    return ('mkl' if cpu_vendor(cpuinfo) == MKL_VENDOR else 'default'), False


def blas_module():
    """bench/blas.py, which makes MKL's folder ready (imported only when MKL is chosen: it
    takes a while to import, and most machines never need it)."""
    from bench import blas
    return blas


def warn(message):
    print(f'warning: {message}', file=sys.stderr, flush=True)


def choose_blas(environ=os.environ, cpuinfo=CPUINFO, cache=None):
    """Choose the BLAS and set `environ` for it: for MKL, the variables that make child
    processes find it too; where `auto` falls back to the default, FCN_BLAS=default, so
    that children do not say so again. Returns ('mkl', its folder) or ('default', None);
    loads nothing."""
    name, asked = blas_choice(environ, cpuinfo)
    if name == 'mkl' and not asked and importlib.util.find_spec('caffe') is None:
        # No Caffe to run on it (a light virtualenv inferring on OpenCV or ONNX Runtime).
        return 'default', None
    if name == 'mkl':
        blas = blas_module()
        cache = Path(cache or blas.DEFAULT_CACHE)
        folder = blas.ready('mkl', cache)
        if folder is not None:
            # FCN_BLAS is left as it was: a child on another machine chooses for its own CPU.
            environ.update(blas.library_env(environ, folder, blas.CANDIDATES['mkl'].env,
                                            choice=environ.get(BLAS_VARIABLE)))
            return 'mkl', folder
        where = cache / 'mkl'
        if asked:
            raise BlasChoiceError(
                f'{BLAS_VARIABLE}=mkl, but MKL is not ready in {where}: make it ready with '
                f'`make caffe {BLAS_VARIABLE}=mkl` (or `.venv/bin/python -m bench.blas mkl`), '
                f'or set {BLAS_VARIABLE}=default for Debian\'s OpenBLAS')
        if not environ.get(CUDA_VARIABLE):
            warn(f'MKL, the BLAS for this Intel CPU, is not ready in {where}: Caffe runs on '
                 f"Debian's OpenBLAS. `make caffe` makes MKL ready; {BLAS_VARIABLE}=default "
                 'chooses OpenBLAS without this warning')
        environ[BLAS_VARIABLE] = 'default'
    return 'default', None


def mapped_libraries():
    """Paths of the shared libraries mapped into this process."""
    try:
        lines = Path('/proc/self/maps').read_text().splitlines()
    except OSError:
        return set()
    fields = (line.split(None, 5) for line in lines)
    return {parts[5] for parts in fields if len(parts) == 6 and parts[5].startswith('/')}


def load_ahead(folder):
    """Load `folder`'s libopenblas.so.0 into this process, so that libcaffe, loaded later,
    takes it for its BLAS. Returns the library, or None when Caffe is loaded already (it
    keeps the BLAS it found; this is said once)."""
    library = Path(folder) / CAFFE_BLAS_LIBRARY
    mapped = mapped_libraries()
    caffe = [path for path in mapped if Path(path).name.startswith('libcaffe')]
    if caffe:
        # Found through LD_LIBRARY_PATH (a child of a tool) it is the chosen one all the same.
        if str(library) not in mapped:
            warn(f'Caffe ({caffe[0]}) was loaded before solve/caffe_env.py, so it keeps the '
                 f'BLAS it found rather than {library}: import caffe_env (or netfiles) '
                 'before caffe')
        return None
    # A local load: libcaffe still finds MKL's functions, through the library it needs,
    # and no other library in the process (PyTorch, numpy) sees them.
    return ctypes.CDLL(str(library))


def apply(environ=os.environ, load=True):
    """Set each of CAFFE_ENV's variables that `environ` does not have yet, choose the BLAS
    (choose_blas) and, with `load`, load it ahead of Caffe. Returns the choice."""
    for name, value in CAFFE_ENV.items():
        environ.setdefault(name, value)
    global BLAS, _loaded_blas
    BLAS = choose_blas(environ)
    if load and BLAS[0] == 'mkl':
        try:
            _loaded_blas = load_ahead(BLAS[1])
        except OSError as error:
            raise BlasChoiceError(f'could not load MKL from {BLAS[1]} ({error}): remake it '
                                  'with `.venv/bin/python -m bench.blas mkl` after removing '
                                  f'the folder, or set {BLAS_VARIABLE}=default') from None
    return BLAS


BLAS = ('default', None)
_loaded_blas = None


def described(name, folder, asked, environ=os.environ, cpuinfo=CPUINFO):
    """One line: the BLAS Caffe runs on, and what chose it."""
    what = f'MKL from {folder}' if name == 'mkl' else "Debian's OpenMP OpenBLAS"
    if asked:
        why = f'{BLAS_VARIABLE}={name}'
    elif environ.get(CUDA_VARIABLE):
        why = f'a CUDA build: {CUDA_VARIABLE}'
    else:
        why = f'the CPU is {cpu_vendor(cpuinfo) or "of an unknown vendor"}'
    return f'blas: Caffe runs on {what} ({why})'


def prepare_blas(environ=os.environ, cpuinfo=CPUINFO, cache=None, out=None):
    """Make the BLAS chosen here ready (MKL: fetched and unpacked by bench/blas.py) and say
    which it is. Where `auto` chose MKL and it cannot be made ready, one warning line says
    why and Caffe runs on the default; the failure is remembered, and asked again only
    when FCN_BLAS=mkl names it. Returns the BLAS Caffe will run on."""
    out = out or sys.stderr
    name, asked = blas_choice(environ, cpuinfo)
    if name == 'default' or (environ.get(CUDA_VARIABLE) and not asked):
        print(described('default', None, asked, environ, cpuinfo), file=out)
        return 'default'
    blas = blas_module()
    cache = Path(cache or blas.DEFAULT_CACHE)
    unavailable = cache / f'mkl{UNAVAILABLE_SUFFIX}'
    if blas.ready('mkl', cache) is None and unavailable.exists() and not asked:
        tried = time.strftime('%Y-%m-%d', time.localtime(unavailable.stat().st_mtime))
        warn(f'MKL, the BLAS for this Intel CPU, could not be made ready on {tried} '
             f"({unavailable.read_text().strip()}); Caffe runs on Debian's OpenBLAS. "
             f'To try again: make caffe {BLAS_VARIABLE}=mkl')
        return 'default'
    try:
        folder = blas.prepare('mkl', cache, blas.CANDIDATES, out=out)
    except (blas.BlasError, OSError) as error:
        reason = ' '.join(str(error).split())
        if asked:
            raise BlasChoiceError(f'{BLAS_VARIABLE}=mkl: MKL could not be made ready: '
                                  f'{reason}') from None
        reason = reason if len(reason) <= 300 else reason[:297] + '...'
        try:
            cache.mkdir(parents=True, exist_ok=True)
            unavailable.write_text(f'{reason}\n')
        except OSError:
            pass
        warn(f'MKL, the BLAS for this Intel CPU, could not be made ready ({reason}); Caffe '
             f"runs on Debian's OpenBLAS. To try again: make caffe {BLAS_VARIABLE}=mkl")
        return 'default'
    unavailable.unlink(missing_ok=True)
    print(described('mkl', folder, asked, environ, cpuinfo), file=out)
    return 'mkl'


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python solve/caffe_env.py', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--prepare', action='store_true',
                        help='make the chosen BLAS ready (MKL: fetched through pip and '
                             'unpacked once); never fails where FCN_BLAS is auto')
    parser.add_argument('command', nargs=argparse.REMAINDER,
                        help='after --: a command to run with the environment set, e.g. '
                             'Caffe\'s C++ test binary')
    args = parser.parse_args(argv)
    if args.prepare:
        prepare_blas()
        return
    command = args.command[1:] if args.command[:1] == ['--'] else args.command
    asked = blas_choice()[1]  # before a fallback is written into FCN_BLAS
    # The command is another process: it loads the BLAS itself, as the variables say.
    name, folder = apply(load=False)
    # Said on standard error beside a command, whose output stays its own.
    print(described(name, folder, asked), file=sys.stderr if command else sys.stdout,
          flush=True)
    if command:
        try:
            os.execvp(command[0], command)
        except OSError as error:
            raise UsageError(f'cannot run {command[0]}: {error}') from None


if __name__ == '__main__':
    run_command(main)
else:
    try:
        apply()
    except BlasChoiceError as error:
        # Importing this module chooses the process's BLAS, before any command's main runs
        # and wherever the import is: a choice that cannot be followed ends the process in
        # one line, as a command would.
        exit_with(error)
