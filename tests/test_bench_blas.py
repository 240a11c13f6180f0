"""The BLAS candidates of bench/blas.py: the library that forwards Caffe's CBLAS calls to
prefixed names, the pinned wheel fetched through pip from a local server, Debian's builds
linked in place, and the thread setter that skips what a stand-in BLAS lacks."""

import ctypes
import hashlib
import io
import shutil
import subprocess
import zipfile

import numpy as np
import pytest

import caffe  # noqa: F401  (maps libcaffe, whose imports are checked)
from fcn.runtime import devices, threads
from bench import __main__ as bench_main, blas
from checks.fixtures import FileServer

ROW_MAJOR, NO_TRANS = 101, 111

# A stand-in BLAS: every function Caffe and the tools call exists under `prefix`; sdot,
# saxpy and sgemm compute (naively: the oracle is numpy), the thread setter keeps its count.
FAKE_BLAS = r'''
int {p}threads = 0;
void {p}openblas_set_num_threads(int n) {{ {p}threads = n; }}
int {p}openblas_get_num_threads(void) {{ return {p}threads; }}
float {p}cblas_sdot(int n, const float *x, int incx, const float *y, int incy) {{
    float sum = 0;
    for (int i = 0; i < n; ++i) sum += x[i * incx] * y[i * incy];
    return sum;
}}
void {p}cblas_saxpy(int n, float alpha, const float *x, int incx, float *y, int incy) {{
    for (int i = 0; i < n; ++i) y[i * incy] += alpha * x[i * incx];
}}
void {p}cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha,
                    const float *a, int lda, const float *b, int ldb, float beta,
                    float *c, int ldc) {{
    for (int i = 0; i < m; ++i)
        for (int j = 0; j < n; ++j) {{
            float sum = 0;
            for (int l = 0; l < k; ++l) sum += a[i * lda + l] * b[l * ldb + j];
            c[i * ldc + j] = alpha * sum + beta * c[i * ldc + j];
        }}
}}
'''
COMPUTED = ('cblas_sdot', 'cblas_saxpy', 'cblas_sgemm', *blas.THREAD_FUNCTIONS)


def fake_blas(path, prefix, leave_out=()):
    """Compile the stand-in BLAS into `path`, without the functions in `leave_out`."""
    stubs = ''.join(f'int {prefix}{name}(void) {{ return 0; }}\n'
                    for name in blas.CAFFE_CBLAS + blas.THREAD_FUNCTIONS
                    if name not in COMPUTED and name not in leave_out)
    source = path.with_suffix('.c')
    source.write_text(FAKE_BLAS.format(p=prefix) + stubs)
    subprocess.run(['gcc', '-shared', '-fPIC', '-O1', '-o', str(path), str(source)],
                   check=True)
    return path


def check_calls(library):
    """Call sdot, saxpy and sgemm (14 arguments: some on the stack, floats in vector
    registers) and the thread functions through `library`, against numpy."""
    rng = np.random.default_rng(0)
    floats = ctypes.POINTER(ctypes.c_float)
    x, y = (rng.standard_normal(7).astype(np.float32) for _ in range(2))
    library.cblas_sdot.restype = ctypes.c_float
    dot = library.cblas_sdot(7, x.ctypes.data_as(floats), 1, y.ctypes.data_as(floats), 1)
    assert dot == pytest.approx(float(x @ y), rel=1e-5)
    expected = y + np.float32(-0.5) * x
    library.cblas_saxpy(7, ctypes.c_float(-0.5), x.ctypes.data_as(floats), 1,
                        y.ctypes.data_as(floats), 1)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    a, b, c = (rng.standard_normal(shape).astype(np.float32)
               for shape in ((3, 4), (4, 5), (3, 5)))
    expected = 2.0 * a @ b + 0.25 * c
    library.cblas_sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, 3, 5, 4, ctypes.c_float(2.0),
                        a.ctypes.data_as(floats), 4, b.ctypes.data_as(floats), 5,
                        ctypes.c_float(0.25), c.ctypes.data_as(floats), 5)
    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-6)
    library.openblas_set_num_threads(3)
    assert library.openblas_get_num_threads() == 3


def load_copy(library):
    """Load a copy of `library` beside it: a file named libopenblas.so.0 mapped into the
    test process would count as Caffe's BLAS in later tests that list the loaded ones."""
    copy = library.parent / 'loaded-copy.so'
    shutil.copyfile(library, copy)
    return ctypes.CDLL(str(copy))


def test_caffe_imports_exactly_the_forwarded_cblas_functions():
    library = devices.loaded_library(r'^libcaffe.*\.so')
    listed = subprocess.run(['nm', '-D', '--undefined-only', library], capture_output=True,
                            text=True, check=True).stdout.split()
    assert {name for name in listed if name.startswith('cblas_')} == set(blas.CAFFE_CBLAS)


def test_the_forwarding_library_passes_every_argument_through(tmp_path):
    target = fake_blas(tmp_path / 'libfake.so', 'fake_')
    shim = tmp_path / 'libopenblas.so.0'
    blas.forwarding_library(shim, target, blas.CAFFE_CBLAS + blas.THREAD_FUNCTIONS, 'fake_',
                            tmp_path)
    check_calls(load_copy(shim))


def test_a_function_missing_from_the_target_is_named(tmp_path):
    target = fake_blas(tmp_path / 'libfake.so', 'fake_', leave_out=('cblas_dgemv',))
    with pytest.raises(blas.BlasError, match='fake_cblas_dgemv'):
        blas.forwarding_library(tmp_path / 'libopenblas.so.0', target,
                                blas.CAFFE_CBLAS, 'fake_', tmp_path)


def fake_wheel(folder, library):
    """fakeblas 1.0 as a wheel holding `library` under fakeblas/lib, and a page linking it."""
    path = folder / 'fakeblas-1.0-py3-none-any.whl'
    with zipfile.ZipFile(path, 'w') as bundle:
        bundle.write(library, 'fakeblas/lib/libfakeblas.so')
        bundle.writestr('fakeblas-1.0.dist-info/METADATA',
                        'Metadata-Version: 2.1\nName: fakeblas\nVersion: 1.0\n')
        bundle.writestr('fakeblas-1.0.dist-info/WHEEL',
                        'Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n'
                        'Tag: py3-none-any\n')
        bundle.writestr('fakeblas-1.0.dist-info/RECORD', '')
    (folder / 'links.html').write_text(f'<html><body><a href="{path.name}">{path.name}</a>'
                                       '</body></html>\n')
    return path


@pytest.fixture
def wheel_server(tmp_path, monkeypatch):
    """A local server with the fake wheel; pip sees it alone (no configured index)."""
    served = tmp_path / 'served'
    served.mkdir()
    wheel = fake_wheel(served, fake_blas(tmp_path / 'libfakeblas.so', 'scipy_'))
    with FileServer(served) as server:
        monkeypatch.setenv('PIP_CONFIG_FILE', '/dev/null')
        monkeypatch.setenv('PIP_NO_INDEX', '1')
        monkeypatch.setenv('PIP_FIND_LINKS', f'{server.url}/links.html')
        yield server, hashlib.sha256(wheel.read_bytes()).hexdigest()


def wheel_candidates(digest):
    return {'fake': blas.Candidate(
        library='libfakeblas.so', prefix='scipy_',
        wheel=blas.Wheel('fakeblas==1.0', digest, 'fakeblas/lib', ('libfakeblas.so',)))}


def wheel_requests(server):
    return [name for name, _ in server.requests if name.endswith('.whl')]


def test_a_wheel_is_fetched_through_pip_checked_and_made_ready_once(tmp_path, wheel_server):
    server, digest = wheel_server
    cache = tmp_path / 'cache'
    folder = blas.prepare('fake', cache, wheel_candidates(digest))
    assert folder == cache / 'fake'
    assert sorted(path.name for path in folder.iterdir()) == ['libfakeblas.so',
                                                              'libopenblas.so.0']
    check_calls(load_copy(folder / 'libopenblas.so.0'))
    assert wheel_requests(server) == ['fakeblas-1.0-py3-none-any.whl']
    # Ready: nothing fetched again; remade from the kept wheel without the server.
    assert blas.prepare('fake', cache, wheel_candidates(digest)) == folder
    (folder / 'libopenblas.so.0').unlink()
    folder.rename(tmp_path / 'old')
    blas.prepare('fake', cache, wheel_candidates(digest))
    assert (folder / 'libopenblas.so.0').exists()
    assert len(wheel_requests(server)) == 1


def test_a_wheel_that_is_not_the_pinned_file_is_refused(tmp_path, wheel_server):
    server, digest = wheel_server
    cache = tmp_path / 'cache'
    with pytest.raises(blas.BlasError, match=f'not the pinned {"0" * 64}'):
        blas.prepare('fake', cache, wheel_candidates('0' * 64))
    assert sorted(path.name for path in cache.iterdir()) == ['downloads']
    assert list((cache / 'downloads').iterdir()) == []


def test_a_version_pip_cannot_find_says_where_to_look(tmp_path, wheel_server):
    candidates = wheel_candidates('0' * 64)
    candidates['fake'] = blas.Candidate(library='x', wheel=blas.Wheel(
        'fakeblas==2.0', '0' * 64, 'fakeblas/lib', ('libfakeblas.so',)))
    with pytest.raises(blas.BlasError, match=r'fakeblas==2\.0.*\n.*pip config list'):
        blas.prepare('fake', tmp_path / 'cache', candidates)


def test_a_debian_library_is_used_in_place(tmp_path):
    # Named as Caffe asks for it (Debian's OpenBLAS builds): a link to it.
    (tmp_path / 'pthread').mkdir()
    system = fake_blas(tmp_path / 'pthread' / 'libopenblas.so.0', '')
    candidates = {'openblas-pthread': blas.Candidate(
        library=system.name, system=system, package='libopenblas0-pthread')}
    folder = blas.prepare('openblas-pthread', tmp_path / 'cache', candidates)
    assert (folder / 'libopenblas.so.0').resolve() == system
    # Named otherwise (BLIS): a library of Caffe's name that needs it where it is.
    system = fake_blas(tmp_path / 'libblis.so.4', '')
    candidates = {'blis': blas.Candidate(library=system.name, system=system,
                                         package='libblis4-openmp')}
    folder = blas.prepare('blis', tmp_path / 'cache', candidates)
    assert not (folder / 'libopenblas.so.0').is_symlink()
    assert blas.ready('blis', tmp_path / 'cache') == folder
    check_calls(load_copy(folder / 'libopenblas.so.0'))


def test_the_candidates_cover_debians_other_builds_and_unknown_names_are_listed():
    assert {'openblas-pthread', 'blis', 'mkl', 'openblas-0.3.34'} <= set(blas.CANDIDATES)
    assert blas.BUILD.DEFAULT_BLAS not in blas.CANDIDATES
    with pytest.raises(blas.BlasError, match='choose from openblas-pthread'):
        blas.prepare('atlas')


def test_a_blas_folder_without_the_library_is_named(tmp_path):
    with pytest.raises(blas.BlasError, match='holds no libopenblas.so.0'):
        blas.library_env({}, tmp_path)
    (tmp_path / 'libopenblas.so.0').write_text('')
    env = blas.library_env({'LD_LIBRARY_PATH': '/x'}, tmp_path, {'MKL_THREADING_LAYER': 'GNU'})
    # FCN_BLAS=default: the tools load no BLAS of their choice ahead of the folder's.
    assert env == {'LD_LIBRARY_PATH': f'{tmp_path}:/x', 'MKL_THREADING_LAYER': 'GNU',
                   'FCN_BLAS': 'default'}
    assert blas.library_env(env, tmp_path)['LD_LIBRARY_PATH'] == f'{tmp_path}:/x'


def test_the_thread_setter_skips_what_a_stand_in_blas_lacks(tmp_path, monkeypatch):
    library = fake_blas(tmp_path / 'libstandin.so', 'x_')
    loaded = ctypes.CDLL(str(library))
    monkeypatch.setattr(threads, 'THREAD_SETTERS', ((str(library), 'openblas_set_num_threads'),
                                                  (str(library), 'x_openblas_set_num_threads')))
    threads.ThreadSetter()(5)
    assert ctypes.c_int.in_dll(loaded, 'x_threads').value == 5


def test_a_workers_repeated_messages_are_shown_once(capsys):
    warning = 'OpenBLAS Warning : Detect OpenMP Loop and this application may hang.\n'
    bench_main.relay_once(io.StringIO(warning * 3 + 'other\n' + warning), 'caffe@blas')
    shown = capsys.readouterr().err
    assert shown.count('OpenBLAS Warning') == 1
    assert 'other\n' in shown
    assert 'caffe@blas: 3 repeated lines of its output not shown' in shown
