"""The Caffe build script's decisions: cache keys, Boost.Python matching, source handling."""
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fcn.paths import REPO
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


# --- the key does not depend on the tools installed ------------------------------------

RUNTIME_IMAGE_TOOLS = ['sh', 'bash', 'make', 'env', 'ls', 'cat', 'dpkg', 'dpkg-query',
                       'apt-get', 'ldconfig']


def key_with_path(path, home):
    """The cache key build.py computes in a fresh process that sees only `path`."""
    env = {k: v for k, v in os.environ.items() if k not in ('FCN_CAFFE_CUDA', 'CAFFE_SRC')}
    env.update(PATH=path, HOME=str(home))
    result = subprocess.run([sys.executable, str(REPO / 'caffe-build' / 'build.py'), '--key'],
                            env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_key_is_the_same_with_and_without_a_compiler_on_path(tmp_path):
    empty = tmp_path / 'empty-bin'
    empty.mkdir()
    # A runtime image's tools: no compiler, no cmake, no dpkg-dev.
    runtime = tmp_path / 'runtime-bin'
    runtime.mkdir()
    for tool in RUNTIME_IMAGE_TOOLS:
        if shutil.which(tool):
            (runtime / tool).symlink_to(shutil.which(tool))
    for compiler in ('gcc', 'cc', 'g++', 'cmake', 'dpkg-architecture'):
        assert shutil.which(compiler, path=str(runtime)) is None
    full = key_with_path(os.environ['PATH'], tmp_path)
    assert full.startswith('py') and '-cpu-' in full
    assert key_with_path(str(empty), tmp_path) == full
    assert key_with_path(str(runtime), tmp_path / 'home') == full


def test_library_folders_need_no_tools(monkeypatch):
    monkeypatch.setenv('PATH', '/nonexistent')
    dirs = build.library_dirs()
    assert Path('/usr/lib') in dirs
    if Path('/etc/debian_version').exists() and build.multiarch():
        assert Path('/usr/lib', build.multiarch()) in dirs


def test_no_boost_python_at_all_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(build, 'library_dirs', lambda: [tmp_path])
    with pytest.raises(SystemExit) as error:
        build.check_boost_python('3.11')
    message = str(error.value)
    assert str(tmp_path) in message and 'libboost-python-dev' in message
    assert 'pythonnone' not in message and 'PYTHON=' not in message


# --- where the Debian source comes from ------------------------------------------------

ONE_LINE = """\
# the main archive
deb http://mirror.invalid/debian bookworm main contrib
deb-src [ arch=amd64 signed-by=/keys/debian.gpg ] http://mirror.invalid/debian bookworm main
deb http://security.invalid/debian-security bookworm-security main  # updates
deb http://elsewhere.invalid/apt nodistro main
   # deb http://commented.invalid/debian bookworm main
"""

DEB822 = """\
Types: deb deb-src
# a snapshot would do as well
URIs: http://one.invalid/debian http://two.invalid/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://off.invalid/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb
URIs: http://inline.invalid/debian
Suites: sid
Components: main non-free
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 abc
 -----END PGP PUBLIC KEY BLOCK-----
"""


def test_one_line_sources_are_parsed_with_their_options():
    entries = build.parse_one_line_sources(ONE_LINE)
    assert [e['uris'][0] for e in entries] == [
        'http://mirror.invalid/debian', 'http://mirror.invalid/debian',
        'http://security.invalid/debian-security', 'http://elsewhere.invalid/apt']
    assert entries[0] == {'types': ['deb'], 'uris': ['http://mirror.invalid/debian'],
                          'suites': ['bookworm'], 'components': ['main', 'contrib'],
                          'signed_by': None}
    assert entries[1]['types'] == ['deb-src'] and entries[1]['signed_by'] == '/keys/debian.gpg'
    assert entries[2]['components'] == ['main']


def test_deb822_sources_are_parsed_and_disabled_stanzas_skipped():
    entries = build.parse_deb822_sources(DEB822)
    assert len(entries) == 2
    first, inline = entries
    assert first['types'] == ['deb', 'deb-src']
    assert first['uris'] == ['http://one.invalid/debian', 'http://two.invalid/debian/']
    assert first['suites'] == ['bookworm', 'bookworm-updates']
    assert first['signed_by'] == '/usr/share/keyrings/debian-archive-keyring.gpg'
    assert inline['components'] == ['main', 'non-free']
    assert inline['signed_by'].startswith('-----BEGIN') and 'abc' in inline['signed_by']


def apt_etc(root, files):
    (root / 'sources.list.d').mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def os_release(root, **fields):
    path = root / 'os-release'
    path.write_text(''.join(f'{k}="{v}"\n' for k, v in fields.items()))
    return path


def test_mirrors_come_from_the_machines_apt_configuration_then_the_users(tmp_path):
    etc = apt_etc(tmp_path / 'etc', {'sources.list': ONE_LINE,
                                     'sources.list.d/debian.sources': DEB822,
                                     'sources.list.d/old.list.disabled': ONE_LINE.replace(
                                         'mirror.invalid', 'disabled.invalid')})
    release = os_release(tmp_path, ID='debian', VERSION_CODENAME='bookworm',
                         PRETTY_NAME='Debian GNU/Linux 12 (bookworm)')
    mirrors = build.debian_mirrors(['http://user.invalid/debian', 'http://one.invalid/debian/'],
                                   etc=etc, os_release=release)
    assert mirrors == [
        # sources.list first; its deb and deb-src lines name one mirror, signed by one key.
        ('http://mirror.invalid/debian', '/keys/debian.gpg'),
        ('http://one.invalid/debian', '/usr/share/keyrings/debian-archive-keyring.gpg'),
        ('http://two.invalid/debian/', '/usr/share/keyrings/debian-archive-keyring.gpg'),
        # sid is Debian's own; its key is written out in the entry, so apt's trust applies.
        ('http://inline.invalid/debian', None),
        # The user's, after, signed like the first; one already configured is asked once.
        ('http://user.invalid/debian', '/keys/debian.gpg')]


def test_a_machine_that_is_not_debian_has_only_the_users_mirrors(tmp_path):
    etc = apt_etc(tmp_path / 'etc', {'sources.list': 'deb http://ubuntu.invalid/ubuntu noble main\n'})
    release = os_release(tmp_path, ID='ubuntu', VERSION_CODENAME='noble',
                         PRETTY_NAME='Ubuntu 24.04 LTS')
    assert build.debian_mirrors(etc=etc, os_release=release) == []
    assert build.debian_mirrors(['http://user.invalid/debian'], etc=etc, os_release=release) \
        == [('http://user.invalid/debian', None)]
    message = str(build.no_mirror_error(etc, release))
    assert 'Ubuntu 24.04 LTS' in message and 'not Debian' in message
    assert 'CAFFE_DEBIAN_MIRROR=' in message and 'CAFFE_SRC=' in message


def test_a_debian_machine_without_a_usable_entry_is_told_what_to_set(tmp_path):
    etc = apt_etc(tmp_path / 'etc', {})
    release = os_release(tmp_path, ID='debian', VERSION_CODENAME='trixie')
    assert build.debian_mirrors(etc=etc, os_release=release) == []
    message = str(build.no_mirror_error(etc, release))
    assert str(etc) in message and 'trixie' in message and build.DEBIAN_SUITE in message
    assert 'CAFFE_DEBIAN_MIRROR=' in message and 'CAFFE_SRC=' in message


def test_no_mirror_at_all_stops_before_apt(tmp_path, monkeypatch):
    monkeypatch.setattr(build, 'debian_mirrors', lambda named: [])
    asked = []
    with pytest.raises(SystemExit, match='CAFFE_DEBIAN_MIRROR'):
        build.fetch_debian_source(tmp_path, fetch=lambda *args: asked.append(args))
    assert asked == []


def pinned_files(tmp_path, monkeypatch):
    """Three stand-in source files, recorded as the pinned ones: {name: content}."""
    files = {'caffe_1-8.dsc': b'dsc', 'caffe_1.orig.tar.gz': b'orig', 'caffe_1-8.debian.tar.xz': b'deb'}
    checksums = tmp_path / 'debian-source.sha256'
    checksums.write_text(''.join(f'{hashlib.sha256(c).hexdigest()}  {n}\n' for n, c in files.items()))
    monkeypatch.setattr(build, 'CHECKSUMS', checksums)
    return files


def test_each_mirror_is_tried_in_turn_until_one_serves_the_recorded_files(tmp_path, monkeypatch):
    files = pinned_files(tmp_path, monkeypatch)
    monkeypatch.setattr(build, 'debian_mirrors', lambda named: [
        ('http://gone.invalid/debian', None), ('http://stale.invalid/debian', '/k.gpg'),
        *[(uri, None) for uri in named]])
    asked = []

    def fetch(uri, keyring, apt, downloads, log):
        asked.append((uri, keyring))
        if 'gone' in uri:
            return "E: The repository 'bullseye Release' does not have a Release file."
        for name, content in files.items():
            (downloads / name).write_bytes(content if 'archive' in uri else b'other')
        return None

    downloads = build.fetch_debian_source(tmp_path / 'cache', ['http://archive.invalid/debian'],
                                          fetch=fetch)
    assert asked == [('http://gone.invalid/debian', None), ('http://stale.invalid/debian', '/k.gpg'),
                     ('http://archive.invalid/debian', None)]
    assert {p.name: p.read_bytes() for p in downloads.iterdir()} == files
    # Verified files already there are used as they are: no mirror is asked again.
    asked.clear()
    assert build.fetch_debian_source(tmp_path / 'cache', fetch=fetch) == downloads
    assert asked == []


def test_when_no_mirror_serves_the_files_the_error_lists_what_was_tried(tmp_path, monkeypatch):
    files = pinned_files(tmp_path, monkeypatch)
    monkeypatch.setattr(build, 'debian_mirrors', lambda named: [
        ('http://gone.invalid/debian', None), ('http://stale.invalid/debian', None)])
    target = tmp_path / 'source'

    def fetch(uri, keyring, apt, downloads, log):
        if 'gone' in uri:
            return 'Err:1 http://gone.invalid/debian bullseye InRelease Could not resolve'
        for name in files:
            (downloads / name).write_bytes(b'tampered')
        return None

    with pytest.raises(SystemExit) as error:
        build.fetch_debian_source(tmp_path / 'cache', downloads=target, fetch=fetch)
    message = str(error.value)
    gone, stale = message.index('http://gone.invalid'), message.index('http://stale.invalid')
    assert gone < stale and 'Could not resolve' in message
    assert 'differs from the recorded' in message and 'CAFFE_DEBIAN_MIRROR' in message
    assert list(target.iterdir()) == []  # what failed its checksum is not kept


def test_apt_problems_keep_the_failing_fetch_with_its_reason():
    output = ('Ign:1 http://m.invalid/debian bullseye InRelease\n'
              'Err:2 http://m.invalid/debian bullseye Release\n'
              '  404  Not Found [IP: 127.0.0.1 80]\n'
              'Reading package lists...\n'
              "E: The repository 'http://m.invalid/debian bullseye Release' does not have "
              'a Release file.\n')
    assert build.apt_problems(output) == [
        'Err:2 http://m.invalid/debian bullseye Release 404  Not Found [IP: 127.0.0.1 80]',
        "E: The repository 'http://m.invalid/debian bullseye Release' does not have a "
        'Release file.']


# --- the cache a build cannot write; pycaffe's tests on newer Pythons --------------------

def test_an_unwritable_cache_without_the_build_names_what_differs(tmp_path, monkeypatch):
    other = dict(build.cmake_flags(PYTHON, [], []), OpenBLAS_LIB='/usr/lib/x/libopenblas.so.0')
    (tmp_path / 'py311-cpu-other').mkdir()
    (tmp_path / 'py311-cpu-other' / 'build-info.json').write_text(
        json.dumps({'key': 'py311-cpu-other', 'flags': other}))
    flags = {k: v for k, v in other.items() if k != 'OpenBLAS_LIB'}
    monkeypatch.setattr(build.os, 'access', lambda path, mode: False)
    with pytest.raises(SystemExit) as error:
        build.check_cache_writable(tmp_path, 'py311-cpu-wanted', flags)
    message = str(error.value)
    assert 'py311-cpu-wanted' in message and 'not writable' in message
    assert "py311-cpu-other: OpenBLAS_LIB='/usr/lib/x/libopenblas.so.0' there, None here" \
        in message


def test_pycaffe_tests_run_where_unittest_lost_assert_equals(tmp_path):
    """Python 3.12 removed assertEquals, which Caffe's test_coord_map.py uses: simulated
    here by a sitecustomize that deletes it before anything else runs."""
    tests = tmp_path / 'tests'
    tests.mkdir()
    (tests / 'test_old_alias.py').write_text(
        'import unittest\n\nclass T(unittest.TestCase):\n'
        '    def test_it(self):\n        self.assertEquals(1, 1)\n')
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(
        'import unittest\nif hasattr(unittest.TestCase, "assertEquals"):\n'
        '    del unittest.TestCase.assertEquals\n')
    env = dict(os.environ, PYTHONPATH=str(site))
    plain = subprocess.run([sys.executable, '-m', 'unittest', 'discover', '-s', str(tests)],
                           env=env, capture_output=True, text=True, cwd=tmp_path)
    assert plain.returncode != 0 and 'assertEquals' in plain.stderr
    shimmed = subprocess.run([sys.executable, '-c', build.PYCAFFE_TEST_RUNNER, str(tests)],
                             env=env, capture_output=True, text=True, cwd=tmp_path)
    assert shimmed.returncode == 0, shimmed.stderr
    assert 'Ran 1 test' in shimmed.stderr
