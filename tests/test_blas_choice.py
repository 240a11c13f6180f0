"""The BLAS Caffe runs on, chosen when a tool starts (solve/caffe_env.py): by the CPU's
vendor or by FCN_BLAS; made ready by `make caffe` through pip, or left to the default with
one warning line; and, in processes of their own, the chosen library is the one Caffe
calls while Debian's OpenBLAS stays out. MKL is played by a stand-in compiled here under
MKL's library name, which counts its calls; its wheel comes from a local server."""

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fcn.runtime import caffe_env
from bench import blas
from checks.fixtures import FileServer

from fcn.paths import REPO

INTEL = ('processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n'
         'model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n'
         'flags\t\t: fpu sse2 avx2 avx512f amx_tile amx_bf16\n\n'
         'processor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n')
AMD = ('processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n'
       'model name\t: AMD EPYC 9B45\nflags\t\t: fpu sse2 avx2 avx512f\n')
ARM = ('processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm\n'
       'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd0c\n')

# MKL's runtime library as Caffe and the tools see it: the CBLAS functions Caffe imports
# (sgemm computes, in row-major order with either operand transposed, as Caffe calls it;
# the rest are never called by the nets here) and MKL's thread count. It counts sgemm calls.
STAND_IN = r'''
int standin_sgemm_calls = 0;
int standin_threads = 0;
void MKL_Set_Num_Threads(int n) { standin_threads = n; }
int MKL_Get_Max_Threads(void) { return standin_threads; }
void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta,
                 float *c, int ldc) {
    ++standin_sgemm_calls;
    for (int i = 0; i < m; ++i)
        for (int j = 0; j < n; ++j) {
            float sum = 0;
            for (int l = 0; l < k; ++l)
                sum += (ta == 111 ? a[i * lda + l] : a[l * lda + i])
                     * (tb == 111 ? b[l * ldb + j] : b[j * ldb + l]);
            c[i * ldc + j] = alpha * sum + (beta == 0 ? 0 : beta * c[i * ldc + j]);
        }
}
'''
MKL_NAME = 'libmkl_rt.so.3'


def stand_in(folder):
    """Compile the stand-in into `folder`/libmkl_rt.so.3 (its SONAME too, as MKL's)."""
    stubs = ''.join(f'int {name}(void) {{ return 0; }}\n' for name in blas.CAFFE_CBLAS
                    if name != 'cblas_sgemm')
    source = folder / 'standin.c'
    source.write_text(STAND_IN + stubs)
    library = folder / MKL_NAME
    subprocess.run(['gcc', '-shared', '-fPIC', '-O1', f'-Wl,-soname,{MKL_NAME}', '-o',
                    str(library), str(source)], check=True)
    return library


def stand_in_candidate(library):
    """MKL's candidate with the stand-in, installed where it is (no fetching)."""
    return blas.Candidate(library=library.name, system=library, package='none',
                          env=blas.CANDIDATES['mkl'].env)


def write(tmp_path, text, name='cpuinfo'):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def clean_env():
    """A copy of the environment without a BLAS choice in it, as a user's shell has."""
    return {key: value for key, value in os.environ.items()
            if key not in ('FCN_BLAS', 'FCN_CAFFE_CUDA', 'LD_LIBRARY_PATH')
            and not key.startswith('MKL_')}


@pytest.fixture
def ready_cache(tmp_path, monkeypatch):
    """A cache whose MKL folder is ready, for the stand-in in `built/`."""
    built = tmp_path / 'built'
    built.mkdir()
    monkeypatch.setitem(blas.CANDIDATES, 'mkl', stand_in_candidate(stand_in(built)))
    cache = tmp_path / 'cache' / 'blas'
    blas.prepare('mkl', cache, blas.CANDIDATES)
    return cache


# --- the choice ------------------------------------------------------------------------

@pytest.mark.parametrize('text, vendor, choice', [
    (INTEL, 'GenuineIntel', 'mkl'),
    (AMD, 'AuthenticAMD', 'default'),
    (ARM, None, 'default'),
    (None, None, 'default'),
])
def test_the_cpu_vendor_chooses_the_blas(tmp_path, text, vendor, choice):
    cpuinfo = write(tmp_path, text) if text is not None else tmp_path / 'missing'
    assert caffe_env.cpu_vendor(cpuinfo) == vendor
    assert caffe_env.blas_choice({}, cpuinfo) == (choice, False)
    assert caffe_env.blas_choice({'FCN_BLAS': 'auto'}, cpuinfo) == (choice, False)


def test_fcn_blas_overrides_the_cpu(tmp_path):
    intel, amd = write(tmp_path, INTEL, 'intel'), write(tmp_path, AMD, 'amd')
    assert caffe_env.blas_choice({'FCN_BLAS': 'default'}, intel) == ('default', True)
    assert caffe_env.blas_choice({'FCN_BLAS': 'mkl'}, amd) == ('mkl', True)
    assert caffe_env.blas_choice({'FCN_BLAS': ' MKL '}, amd) == ('mkl', True)
    assert caffe_env.blas_choice({'FCN_BLAS': ''}, intel) == ('mkl', False)


def test_a_bad_choice_is_named_with_the_ones_there_are(tmp_path):
    with pytest.raises(caffe_env.BlasChoiceError,
                       match=r"FCN_BLAS='openblas' is not a BLAS choice: set it to auto "
                             r"\(MKL on Intel CPUs.*\), mkl or default"):
        caffe_env.blas_choice({'FCN_BLAS': 'openblas'}, write(tmp_path, INTEL))


def test_the_names_agree_with_bench_blas():
    assert caffe_env.BLAS_VARIABLE == blas.CHOICE_VARIABLE
    assert caffe_env.CAFFE_BLAS_LIBRARY == blas.CAFFE_LIBRARY
    assert blas.CANDIDATES['mkl'].library == MKL_NAME


# --- the environment -------------------------------------------------------------------

def test_mkl_chosen_sets_gnu_threads_and_leads_the_search_path(tmp_path, ready_cache):
    environ = {'LD_LIBRARY_PATH': '/opt/x'}
    name, folder = caffe_env.choose_blas(environ, write(tmp_path, INTEL), ready_cache)
    assert (name, folder) == ('mkl', ready_cache / 'mkl')
    # FCN_BLAS stays unset: a child on another machine chooses for its own CPU.
    assert environ == {'LD_LIBRARY_PATH': f'{folder}:/opt/x',
                       'MKL_THREADING_LAYER': 'GNU', 'MKL_INTERFACE_LAYER': 'LP64'}
    # A child process that chooses again finds the same and adds nothing.
    caffe_env.choose_blas(environ, write(tmp_path, INTEL), ready_cache)
    assert environ['LD_LIBRARY_PATH'] == f'{folder}:/opt/x'
    environ = {'FCN_BLAS': 'mkl'}
    caffe_env.choose_blas(environ, write(tmp_path, AMD), ready_cache)
    assert (environ['FCN_BLAS'], environ['LD_LIBRARY_PATH']) == ('mkl', str(folder))


def test_the_default_adds_nothing(tmp_path, ready_cache):
    environ = {}
    assert caffe_env.choose_blas(environ, write(tmp_path, AMD), ready_cache) == ('default', None)
    assert environ == {}
    environ = {'FCN_BLAS': 'default'}
    assert caffe_env.choose_blas(environ, write(tmp_path, INTEL), ready_cache)[0] == 'default'
    assert environ == {'FCN_BLAS': 'default'}


def test_intel_without_mkl_warns_in_one_line_and_runs_on_the_default(tmp_path, capsys):
    environ = {}
    intel = write(tmp_path, INTEL)
    assert caffe_env.choose_blas(environ, intel, tmp_path / 'empty') == ('default', None)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('warning: MKL, the BLAS for this Intel CPU,')
    assert '`make caffe` makes MKL ready' in lines[0]
    # Children inherit the decision, and say nothing.
    assert environ == {'FCN_BLAS': 'default'}
    caffe_env.choose_blas(environ, intel, tmp_path / 'empty')
    assert capsys.readouterr().err == ''
    # A CUDA build does not use it, and does not warn.
    caffe_env.choose_blas({'FCN_CAFFE_CUDA': '80'}, intel, tmp_path / 'empty')
    assert capsys.readouterr().err == ''


def test_mkl_named_but_missing_is_an_error_that_says_what_to_do(tmp_path):
    with pytest.raises(caffe_env.BlasChoiceError,
                       match=r'FCN_BLAS=mkl, but MKL is not ready in .*empty/mkl: make it '
                             r'ready with `make caffe FCN_BLAS=mkl`'):
        caffe_env.choose_blas({'FCN_BLAS': 'mkl'}, write(tmp_path, AMD), tmp_path / 'empty')


def test_mkl_named_but_missing_stops_a_command_in_one_line(tmp_path, clean_env):
    """The choice is made when a command imports the library, before its main runs."""
    env = dict(clean_env, FCN_BLAS='mkl', FCN_CAFFE_CACHE=str(tmp_path / 'empty'))
    done = subprocess.run([sys.executable, 'solve/infer.py', '--help'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ''
    said, = done.stderr.splitlines()
    assert said.startswith(f'error: FCN_BLAS=mkl, but MKL is not ready in '
                           f'{tmp_path / "empty" / "blas" / "mkl"}: make it ready')


# --- made ready by `make caffe` --------------------------------------------------------

def test_prepare_on_other_cpus_fetches_nothing(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError('nothing is to be fetched for this CPU')
    monkeypatch.setattr(blas, 'prepare', refuse)
    for text in (AMD, ARM):
        assert caffe_env.prepare_blas({}, write(tmp_path, text), tmp_path / 'cache') == 'default'
    assert caffe_env.prepare_blas({'FCN_CAFFE_CUDA': '80'}, write(tmp_path, INTEL),
                                  tmp_path / 'cache') == 'default'
    assert not (tmp_path / 'cache').exists()
    said = capsys.readouterr().err
    assert "Caffe runs on Debian's OpenMP OpenBLAS (the CPU is AuthenticAMD)" in said
    assert '(a CUDA build: FCN_CAFFE_CUDA)' in said


def mkl_wheel(folder, library):
    """The stand-in as the wheel fakemkl 1.0, and a page linking it."""
    path = folder / 'fakemkl-1.0-py3-none-any.whl'
    with zipfile.ZipFile(path, 'w') as bundle:
        bundle.write(library, f'fakemkl/lib/{MKL_NAME}')
        bundle.writestr('fakemkl-1.0.dist-info/METADATA',
                        'Metadata-Version: 2.1\nName: fakemkl\nVersion: 1.0\n')
        bundle.writestr('fakemkl-1.0.dist-info/WHEEL',
                        'Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n'
                        'Tag: py3-none-any\n')
        bundle.writestr('fakemkl-1.0.dist-info/RECORD', '')
    (folder / 'links.html').write_text(f'<a href="{path.name}">{path.name}</a>\n')
    return path


@pytest.fixture
def mkl_server(tmp_path, monkeypatch):
    """A local server with the stand-in's wheel as MKL's candidate; pip sees it alone."""
    served = tmp_path / 'served'
    served.mkdir()
    wheel = mkl_wheel(served, stand_in(tmp_path))
    monkeypatch.setitem(blas.CANDIDATES, 'mkl', blas.Candidate(
        library=MKL_NAME, env=blas.CANDIDATES['mkl'].env,
        wheel=blas.Wheel('fakemkl==1.0', hashlib.sha256(wheel.read_bytes()).hexdigest(),
                         'fakemkl/lib', (MKL_NAME,))))
    with FileServer(served) as server:
        monkeypatch.setenv('PIP_CONFIG_FILE', '/dev/null')
        monkeypatch.setenv('PIP_NO_INDEX', '1')
        monkeypatch.setenv('PIP_FIND_LINKS', f'{server.url}/links.html')
        yield server


def wheel_requests(server):
    return [name for name, _ in server.requests if name.endswith('.whl')]


def test_prepare_on_intel_fetches_the_wheel_through_pip_once(tmp_path, mkl_server, capsys):
    cache = tmp_path / 'cache' / 'blas'
    intel = write(tmp_path, INTEL)
    assert caffe_env.prepare_blas({}, intel, cache) == 'mkl'
    assert blas.ready('mkl', cache) == cache / 'mkl'
    assert caffe_env.prepare_blas({}, intel, cache) == 'mkl'
    assert wheel_requests(mkl_server) == ['fakemkl-1.0-py3-none-any.whl']
    assert (f'Caffe runs on MKL from {cache / "mkl"} (the CPU is GenuineIntel)'
            in capsys.readouterr().err)


def test_prepare_that_cannot_fetch_warns_in_one_line_and_asks_again_only_when_named(
        tmp_path, mkl_server, monkeypatch, capsys):
    empty = tmp_path / 'no-wheels'
    empty.mkdir()
    monkeypatch.setenv('PIP_FIND_LINKS', str(empty))
    cache = tmp_path / 'cache' / 'blas'
    intel = write(tmp_path, INTEL)
    assert caffe_env.prepare_blas({}, intel, cache) == 'default'
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith('warning:')]
    assert len(warnings) == 1
    assert 'could not be made ready (pip could not fetch fakemkl==1.0' in warnings[0]
    assert warnings[0].endswith('To try again: make caffe FCN_BLAS=mkl')
    # Remembered: the next `make caffe` says so without asking pip.
    prepare, calls = blas.prepare, []
    monkeypatch.setattr(blas, 'prepare', lambda *args, **kwargs: calls.append(args))
    assert caffe_env.prepare_blas({}, intel, cache) == 'default'
    assert calls == []
    assert capsys.readouterr().err.count('warning:') == 1
    # Named, it is asked for again, and its failure is an error.
    monkeypatch.setattr(blas, 'prepare', prepare)
    with pytest.raises(caffe_env.BlasChoiceError, match='FCN_BLAS=mkl: MKL could not be made '
                                                        'ready: pip could not fetch'):
        caffe_env.prepare_blas({'FCN_BLAS': 'mkl'}, intel, cache)


def test_an_outdated_folder_is_remade_with_a_library_of_caffes_name(tmp_path):
    library = stand_in(tmp_path)
    cache = tmp_path / 'cache'
    folder = cache / 'mkl'
    folder.mkdir(parents=True)
    (folder / 'libopenblas.so.0').symlink_to(library)
    assert blas.ready('mkl', cache) is None
    assert blas.prepare('mkl', cache, {'mkl': stand_in_candidate(library)}) == folder
    assert blas.ready('mkl', cache) == folder
    dynamic = subprocess.run(['readelf', '-d', str(folder / 'libopenblas.so.0')],
                             capture_output=True, text=True, check=True).stdout
    assert '[libopenblas.so.0]' in dynamic and f'[{MKL_NAME}]' in dynamic


# --- in a process ----------------------------------------------------------------------

# Loads the tools' environment, then Caffe; an InnerProduct and a Convolution layer run
# forward; reports their outputs against numpy (largest difference for the largest value),
# the stand-in's sgemm count, the mapped libraries, and what the thread setter reached.
# Then a child that imports caffe without caffe_env runs the same layers.
IN_A_PROCESS = r'''
import ctypes, json, os, subprocess, sys, tempfile
child = len(sys.argv) > 1
if not child:
    from fcn.runtime import caffe_env
import numpy as np
import caffe
from caffe import layers as L

def report():
    caffe.set_mode_cpu()
    spec = caffe.NetSpec()
    spec.data = L.Input(shape=dict(dim=[3, 2, 6, 6]))
    filler = dict(type='gaussian', std=1)
    spec.ip = L.InnerProduct(spec.data, num_output=4, weight_filler=filler, bias_filler=filler)
    spec.conv = L.Convolution(spec.data, num_output=3, kernel_size=3, weight_filler=filler,
                              bias_filler=filler)
    with tempfile.NamedTemporaryFile('w', suffix='.prototxt', delete=False) as net_file:
        net_file.write(str(spec.to_proto()))
    net = caffe.Net(net_file.name, caffe.TEST)
    os.unlink(net_file.name)
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    net.blobs['data'].data[...] = x
    net.forward()
    w, b = (blob.data for blob in net.params['ip'])
    ip = x.reshape(3, -1) @ w.T + b
    cw, cb = (blob.data for blob in net.params['conv'])
    conv = np.stack([np.stack([np.einsum('nchw,ochw->no', x[:, :, i:i + 3, j:j + 3], cw) + cb
                               for j in range(4)], -1) for i in range(4)], -2)
    maps = sorted({line.split(None, 5)[5].strip() for line in open('/proc/self/maps')
                   if len(line.split(None, 5)) == 6 and '.so' in line})
    def error(name, expected):
        return float(np.abs(net.blobs[name].data - expected).max() / np.abs(expected).max())

    return {'ip': error('ip', ip), 'conv': error('conv', conv), 'maps': maps,
            'environ': {key: os.environ.get(key) for key in
                        ('FCN_BLAS', 'MKL_THREADING_LAYER', 'LD_LIBRARY_PATH')}}

result = report()
mkl = ctypes.CDLL('libmkl_rt.so.3', mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
try:
    result['sgemm_calls'] = ctypes.c_int.in_dll(mkl, 'standin_sgemm_calls').value
except ValueError:
    pass  # MKL itself
if not child:
    from fcn.runtime import threads
    threads.ThreadSetter()(5)
    result['mkl_threads'] = mkl.MKL_Get_Max_Threads()
    result['child'] = json.loads(subprocess.run(
        [sys.executable, __file__, 'child'], capture_output=True, text=True,
        check=True).stdout)
print(json.dumps(result))
'''


def run_in_a_process(tmp_path, env):
    script = tmp_path / 'in_a_process.py'
    script.write_text(IN_A_PROCESS)
    result = subprocess.run([sys.executable, str(script)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def other_openblas(maps, folder):
    """Mapped libraries named libopenblas* from elsewhere than `folder` (Debian's)."""
    return [path for path in maps if Path(path).name.startswith('libopenblas')
            and Path(path).parent != folder]


def test_the_chosen_library_is_the_one_caffe_calls(tmp_path, ready_cache, clean_env):
    folder = ready_cache / 'mkl'
    env = dict(clean_env, FCN_BLAS='mkl', FCN_CAFFE_CACHE=str(ready_cache.parent))
    result = run_in_a_process(tmp_path, env)
    for process in (result, result['child']):
        assert process['ip'] < 1e-5 and process['conv'] < 1e-5
        # InnerProduct: its weights and its bias, each one sgemm; Convolution the same.
        assert process['sgemm_calls'] >= 4
        assert str(folder / 'libopenblas.so.0') in process['maps']
        assert str(tmp_path / 'built' / MKL_NAME) in process['maps']
        assert other_openblas(process['maps'], folder) == []
        assert process['environ'] == {'FCN_BLAS': 'mkl', 'MKL_THREADING_LAYER': 'GNU',
                                      'LD_LIBRARY_PATH': str(folder)}
    # The tools' thread setter reaches the chosen library's own count.
    assert result['mkl_threads'] == 5


def test_caffe_loaded_first_keeps_its_blas_and_is_told_so(tmp_path, ready_cache, clean_env):
    script = 'import caffe\nfrom fcn.runtime import caffe_env\n'
    env = dict(clean_env, FCN_BLAS='mkl', FCN_CAFFE_CACHE=str(ready_cache.parent))
    said = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, timeout=60, check=True).stderr
    assert 'was loaded before solve/caffe_env.py, so it keeps the BLAS it found' in said
    # A child of a tool found the chosen one through LD_LIBRARY_PATH: nothing to say.
    env['LD_LIBRARY_PATH'] = str(ready_cache / 'mkl')
    said = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, timeout=60, check=True).stderr
    assert said == ''


def test_caffes_own_tests_run_with_the_chosen_blas(tmp_path, ready_cache, clean_env):
    printed = 'import json, os; print(json.dumps(dict(os.environ)))'
    command = blas.BUILD.with_runtime_env([sys.executable, '-c', printed])
    assert command[:3] == [sys.executable, str(REPO / 'solve' / 'caffe_env.py'), '--']
    env = dict(clean_env, FCN_BLAS='mkl', FCN_CAFFE_CACHE=str(ready_cache.parent))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen['LD_LIBRARY_PATH'] == str(ready_cache / 'mkl')
    assert (seen['MKL_THREADING_LAYER'], seen['FCN_BLAS']) == ('GNU', 'mkl')
    assert f'blas: Caffe runs on MKL from {ready_cache / "mkl"} (FCN_BLAS=mkl)' in result.stderr


REAL_MKL = blas.ready('mkl')
# What MKL's thread count follows, after Caffe is loaded.
MKL_THREADS = r'''
import ctypes, json, os, sys
from fcn.runtime import caffe_env, threads
import caffe
mkl = ctypes.CDLL('libmkl_rt.so.3', mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
gomp = ctypes.CDLL('libgomp.so.1', mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
counts = {'start': mkl.MKL_Get_Max_Threads()}
gomp.omp_set_num_threads(1)
counts['omp 1'] = mkl.MKL_Get_Max_Threads()
gomp.omp_set_num_threads(2)
counts['omp 2'] = mkl.MKL_Get_Max_Threads()
threads.ThreadSetter()(1)
counts['setter 1'] = mkl.MKL_Get_Max_Threads()
print(json.dumps(counts))
'''


@pytest.mark.skipif(REAL_MKL is None, reason='MKL is not ready in the cache '
                                             '(`.venv/bin/python -m bench.blas mkl`)')
def test_real_mkl_runs_caffe_on_gnu_openmp_threads(tmp_path, clean_env):
    env = dict(clean_env, FCN_BLAS='mkl')
    report = run_in_a_process(tmp_path, env)
    for process in (report, report['child']):
        assert process['ip'] < 1e-5 and process['conv'] < 1e-5
        names = {Path(path).name for path in process['maps']}
        assert {'libmkl_rt.so.3', 'libmkl_gnu_thread.so.3', 'libmkl_core.so.3'} <= names
        assert 'libiomp5.so' not in names
        assert other_openblas(process['maps'], REAL_MKL) == []
    script = tmp_path / 'mkl_threads.py'
    script.write_text(MKL_THREADS)
    result = subprocess.run([sys.executable, str(script)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    threads = json.loads(result.stdout)
    # MKL's threads follow libgomp's count (its GNU layer), and the tools' setter.
    assert threads['omp 1'] == 1 and threads['setter 1'] == 1
    assert threads['omp 2'] == min(2, len(os.sched_getaffinity(0)))
