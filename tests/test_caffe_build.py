"""The Caffe build script's decisions: cache keys, Boost.Python matching, source handling."""
import importlib.util
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location('caffe_build', REPO / 'caffe-build' / 'build.py')
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

PYTHON = {'executable': '/usr/bin/python3', 'version': '3.11', 'include': '/inc',
          'library': '/lib/libpython3.11.so', 'numpy': '2'}


def key_for(python=PYTHON, features=(), extra=(), identity='debian:x'):
    return build.build_key(identity, build.cmake_flags(python, features, extra), python)


def test_key_is_stable_and_tracks_everything_that_shapes_the_binary():
    assert key_for() == key_for()
    assert key_for().startswith('py311-cpu-')
    others = [key_for(identity='tree:y'),
              key_for(features=['lmdb']),
              key_for(extra=['CMAKE_CXX_FLAGS=-march=native']),
              key_for(python=dict(PYTHON, version='3.12')),
              key_for(python=dict(PYTHON, numpy='1'))]
    assert len({key_for(), *others}) == 1 + len(others)
    # Another interpreter path of the same version builds the same binary.
    assert key_for(python=dict(PYTHON, executable='/elsewhere/python')) == key_for()
    assert key_for(extra=['CPU_ONLY=OFF']).startswith('py311-cuda-')


def test_key_tracks_the_patch_set(tmp_path, monkeypatch):
    monkeypatch.setattr(build, 'PATCH_DIR', tmp_path)
    (tmp_path / 'a.patch').write_text('one')
    first = key_for()
    (tmp_path / 'a.patch').write_text('two')
    assert key_for() != first


def test_malformed_cmake_flag_is_refused():
    with pytest.raises(SystemExit, match='NAME=VALUE'):
        build.cmake_flags(PYTHON, [], ['CPU_ONLY'])


def test_boost_python_mismatch_names_both_versions(tmp_path, monkeypatch):
    (tmp_path / 'libboost_python39.so.1.74.0').touch()
    monkeypatch.setattr(build, 'library_dirs', lambda: [tmp_path])
    with pytest.raises(SystemExit) as error:
        build.check_boost_python('3.11')
    message = str(error.value)
    assert 'Python 3.11' in message and '3.9' in message
    (tmp_path / 'libboost_python311.so').touch()
    build.check_boost_python('3.11')


def test_tree_hash_ignores_vcs_and_build_output(tmp_path):
    (tmp_path / 'CMakeLists.txt').write_text('project(caffe)')
    before = build.sha256_tree(tmp_path)
    for ignored in ('.git', 'build'):
        (tmp_path / ignored).mkdir()
        (tmp_path / ignored / 'x').write_text('noise')
    assert build.sha256_tree(tmp_path) == before
    (tmp_path / 'CMakeLists.txt').write_text('project(caffe2)')
    assert build.sha256_tree(tmp_path) != before


def test_local_tarball_unpacks_and_is_checked(tmp_path):
    tree = tmp_path / 'caffe-master'
    tree.mkdir()
    (tree / 'CMakeLists.txt').write_text('project(caffe)')
    tarball = tmp_path / 'caffe.tar.gz'
    with tarfile.open(tarball, 'w:gz') as tar:
        tar.add(tree, arcname='caffe-master')
    build.unpack_source(tarball, tmp_path, None, tmp_path / 'src', tmp_path / 'log')
    assert (tmp_path / 'src' / 'CMakeLists.txt').read_text() == 'project(caffe)'

    (tmp_path / 'notes.txt').write_text('not caffe')
    bogus = tmp_path / 'bogus.tar.gz'
    with tarfile.open(bogus, 'w:gz') as tar:
        tar.add(tmp_path / 'notes.txt', arcname='notes/notes.txt')
    with pytest.raises(SystemExit, match='no CMakeLists.txt'):
        build.unpack_source(bogus, tmp_path, None, tmp_path / 'src2', tmp_path / 'log')


def test_missing_source_path_is_named():
    with pytest.raises(SystemExit, match='/no/such/caffe'):
        build.source_identity('/no/such/caffe')


def test_recorded_checksums_cover_the_three_debian_files():
    names = build.expected_debian_files()
    assert sorted(Path(n).suffix for n in names) == ['.dsc', '.gz', '.xz']
    assert all(len(digest) == 64 for digest in names.values())


def test_the_blas_choice_is_linked_by_path_and_keyed(monkeypatch):
    monkeypatch.setattr(build, 'multiarch', lambda: 'x86_64-linux-gnu')
    keys = set()
    for blas, (package, library) in build.BLAS_LIBRARIES.items():
        flags = build.cmake_flags(PYTHON, [], [], blas=blas)
        assert flags['OpenBLAS_LIB'] == f'/usr/lib/x86_64-linux-gnu/{library}'
        keys.add(build.build_key('debian:x', flags, PYTHON))
    assert len(keys) == len(build.BLAS_LIBRARIES)
    assert build.cmake_flags(PYTHON, [], []) == build.cmake_flags(PYTHON, [], [],
                                                                   blas=build.DEFAULT_BLAS)
    # The default shares libgomp's thread pool with Caffe's own OpenMP loops.
    assert build.BLAS_LIBRARIES[build.DEFAULT_BLAS][0] == 'libopenblas0-openmp'


def test_unknown_blas_from_the_environment_is_named(monkeypatch):
    monkeypatch.setenv('FCN_CAFFE_BLAS', 'atlas')
    with pytest.raises(SystemExit, match='FCN_CAFFE_BLAS=atlas: expected one of blis, openblas, openblas-pthread'):
        build.main(['--info', '--no-pth'])
