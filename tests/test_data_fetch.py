"""Downloads (resume, verification, mirrors, local archives) against a local HTTP
server on 127.0.0.1, and safe extraction."""
import hashlib
import io
import json
import os
import tarfile
import zipfile

import pytest

from data.extract import ExtractError, extract, find_root
from data.fetch import FetchError, Fetcher, place
from checks.fixtures import FileServer
from data.sources import SOURCES, Source
from test_data_fixtures import tar_with_member

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)


def source(md5=hashlib.md5(PAYLOAD).hexdigest(), sha256=None):
    return Source('blob', 'blob.bin', 'http://upstream.invalid/blob.bin', md5=md5, sha256=sha256)


@pytest.fixture
def server(tmp_path):
    served = tmp_path / 'served'
    served.mkdir()
    (served / 'blob.bin').write_bytes(PAYLOAD)
    with FileServer(served) as running:
        yield running


def fetcher(tmp_path, server, blob=None, **options):
    options.setdefault('mirror', server.url)
    return Fetcher(tmp_path / 'downloads', sources={'blob': blob or source()}, retry_wait=0,
                   out=io.StringIO(), **options)


def said(fetch):
    return fetch.out.getvalue()


def test_download_is_verified_and_renamed_when_complete(tmp_path, server):
    fetch = fetcher(tmp_path, server, source(sha256=hashlib.sha256(PAYLOAD).hexdigest()))
    path = fetch.fetch('blob')
    assert path == tmp_path / 'downloads' / 'blob.bin' and path.read_bytes() == PAYLOAD
    assert not path.with_name('blob.bin.part').exists()
    assert server.requests == [('blob.bin', None)]
    assert fetch.fetch('blob') == path and len(server.requests) == 1  # finished: skipped


def test_interrupted_download_resumes_with_a_range_request(tmp_path, server):
    server.drop_after['blob.bin'] = 1000000
    fetch = fetcher(tmp_path, server)
    assert fetch.fetch('blob').read_bytes() == PAYLOAD
    assert server.requests == [('blob.bin', None), ('blob.bin', 'bytes=1000000-')]
    assert 'interrupted (the connection closed early); resuming' in said(fetch)


def test_partial_file_of_an_earlier_run_is_resumed(tmp_path, server):
    (tmp_path / 'downloads').mkdir()
    (tmp_path / 'downloads' / 'blob.bin.part').write_bytes(PAYLOAD[:500000])
    assert fetcher(tmp_path, server).fetch('blob').read_bytes() == PAYLOAD
    assert server.requests == [('blob.bin', 'bytes=500000-')]


def test_complete_partial_file_is_recognised(tmp_path, server):
    (tmp_path / 'downloads').mkdir()
    (tmp_path / 'downloads' / 'blob.bin.part').write_bytes(PAYLOAD)
    assert fetcher(tmp_path, server).fetch('blob').read_bytes() == PAYLOAD
    assert server.requests == [('blob.bin', 'bytes={}-'.format(len(PAYLOAD)))]


def test_server_without_ranges_starts_over(tmp_path, server):
    server.ranges = False
    (tmp_path / 'downloads').mkdir()
    (tmp_path / 'downloads' / 'blob.bin.part').write_bytes(b'stale bytes')
    assert fetcher(tmp_path, server).fetch('blob').read_bytes() == PAYLOAD


def test_corrupt_download_is_fetched_again(tmp_path, server):
    (tmp_path / 'downloads').mkdir()
    (tmp_path / 'downloads' / 'blob.bin').write_bytes(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 0xFF]))
    fetch = fetcher(tmp_path, server)
    assert fetch.fetch('blob').read_bytes() == PAYLOAD
    assert 'is corrupt (md5 ' in said(fetch) and len(server.requests) == 1


def test_a_bad_partial_file_is_dropped_and_fetched_afresh(tmp_path, server):
    (tmp_path / 'downloads').mkdir()
    (tmp_path / 'downloads' / 'blob.bin.part').write_bytes(b'garbage!')
    fetch = fetcher(tmp_path, server)
    assert fetch.fetch('blob').read_bytes() == PAYLOAD
    assert server.requests == [('blob.bin', 'bytes=8-'), ('blob.bin', None)]
    assert 'failed verification' in said(fetch)


def test_a_file_failing_its_checksum_twice_is_an_error(tmp_path, server):
    fetch = fetcher(tmp_path, server, source(md5='0' * 32))
    with pytest.raises(FetchError, match=r'blob.bin fails its checksum twice .* --url blob=URL'):
        fetch.fetch('blob')
    assert len(server.requests) == 2
    assert not (tmp_path / 'downloads' / 'blob.bin').exists()


def test_without_a_published_checksum_the_first_copy_is_recorded_and_later_ones_held_to_it(
        tmp_path, server):
    fetch = fetcher(tmp_path, server, source(md5=None))
    path = fetch.fetch('blob')
    assert path.read_bytes() == PAYLOAD
    record = tmp_path / 'downloads' / 'blob.bin.digests.json'
    expected = {'size': len(PAYLOAD), 'md5': hashlib.md5(PAYLOAD).hexdigest(),
                'sha1': hashlib.sha1(PAYLOAD).hexdigest(),
                'sha256': hashlib.sha256(PAYLOAD).hexdigest()}
    recorded = json.loads(record.read_text())
    assert {key: recorded[key] for key in expected} == expected
    assert recorded['source'] == server.url + '/blob.bin'
    assert ('NOTE: no checksum is published for blob.bin; recorded its size {} and digests '
            'md5 {} sha1 {} sha256 {} in {}'.format(*expected.values(), record) in said(fetch))
    # A damaged copy is refused against the record and fetched again.
    path.write_bytes(PAYLOAD[:-1] + b'?')
    again = fetcher(tmp_path, server, source(md5=None))
    assert again.fetch('blob').read_bytes() == PAYLOAD
    assert 'sha1 {} (expected {} as recorded in {})'.format(
        hashlib.sha1(PAYLOAD[:-1] + b'?').hexdigest(), expected['sha1'], record) in said(again)
    # A server that now holds another file is refused, with what to do if that is right.
    (server.folder / 'blob.bin').write_bytes(b'another file')
    path.unlink()
    with pytest.raises(FetchError, match=r'fails its checksum twice .*size 12 \(expected '
                                         r'{} as recorded .*delete .*blob.bin.digests.json to '
                                         r'accept the new one'.format(len(PAYLOAD))):
        fetcher(tmp_path, server, source(md5=None)).fetch('blob')


def test_a_published_sha1_is_checked(tmp_path, server):
    fetch = fetcher(tmp_path, server, Source('blob', 'blob.bin', 'http://upstream.invalid/x',
                                             sha1=hashlib.sha1(PAYLOAD).hexdigest()))
    assert fetch.fetch('blob').read_bytes() == PAYLOAD
    assert not (tmp_path / 'downloads' / 'blob.bin.digests.json').exists()
    wrong = fetcher(tmp_path / 'b', server, Source('blob', 'blob.bin', 'http://x/y', sha1='0' * 40))
    with pytest.raises(FetchError, match=r'sha1 {} \(expected 0{{40}}\)'.format(
            hashlib.sha1(PAYLOAD).hexdigest())):
        wrong.fetch('blob')


def test_local_archive_folders_are_used_in_place(tmp_path, server):
    corrupt, good = tmp_path / 'corrupt', tmp_path / 'good'
    corrupt.mkdir()
    good.mkdir()
    (corrupt / 'blob.bin').write_bytes(b'bad copy')
    (good / 'blob.bin').write_bytes(PAYLOAD)
    fetch = fetcher(tmp_path, server, archives=[corrupt, good])
    assert fetch.fetch('blob') == good / 'blob.bin'
    assert 'ignoring {}'.format(corrupt / 'blob.bin') in said(fetch)
    assert server.requests == []
    assert fetcher(tmp_path, server, archives=[corrupt]).fetch('blob').read_bytes() == PAYLOAD


def test_url_overrides_come_before_the_environment_the_mirror_and_upstream(tmp_path, server,
                                                                           monkeypatch):
    for name in ('by-flag.bin', 'by-env.bin'):
        (server.folder / name).write_bytes(PAYLOAD)
    monkeypatch.setenv('FCN_URL_BLOB', server.url + '/by-env.bin')
    flagged = fetcher(tmp_path / 'a', server, urls={'blob': server.url + '/by-flag.bin'})
    assert flagged.url(source()) == server.url + '/by-flag.bin'
    flagged.fetch('blob')
    fetcher(tmp_path / 'b', server).fetch('blob')
    assert [name for name, _ in server.requests] == ['by-flag.bin', 'by-env.bin']
    monkeypatch.delenv('FCN_URL_BLOB')
    assert fetcher(tmp_path, server).url(source()) == server.url + '/blob.bin'
    monkeypatch.setenv('FCN_DATA_MIRROR', 'http://mirror.invalid/fcn/')
    assert fetcher(tmp_path, server, mirror=None).url(source()) == \
        'http://mirror.invalid/fcn/blob.bin'
    monkeypatch.delenv('FCN_DATA_MIRROR')
    assert fetcher(tmp_path, server, mirror=None).url(source()) == 'http://upstream.invalid/blob.bin'
    with pytest.raises(FetchError, match="--url names unknown source 'blog'"):
        fetcher(tmp_path, server, urls={'blog': 'http://x'})


def test_missing_file_on_the_server_says_what_to_do(tmp_path, server):
    (server.folder / 'blob.bin').unlink()
    with pytest.raises(FetchError, match=r'/blob.bin: HTTP 404 .*--url blob=URL, --mirror or '
                                         r'--archives'):
        fetcher(tmp_path, server).fetch('blob')


def test_place_copies_a_single_file_once(tmp_path, server):
    fetch = fetcher(tmp_path, server)
    destination = tmp_path / 'out' / 'names.txt'
    destination.parent.mkdir()
    place(fetch, 'blob', destination)
    assert destination.read_bytes() == PAYLOAD
    place(fetch, 'blob', destination)
    assert len(server.requests) == 1


def test_declared_checksums_replace_the_published_ones_for_the_files_they_name(tmp_path, server,
                                                                             monkeypatch):
    """A copy of one's own making (the rehearsal's archives) passes against the checksums
    its maker declares, and only against those."""
    listed = tmp_path / 'own.sha256'
    listed.write_text('# made here\n{}  blob.bin\n{}  blob.bin\n{}  other.bin\n'.format(
        hashlib.sha256(PAYLOAD).hexdigest(), hashlib.sha1(PAYLOAD).hexdigest(), '0' * 64))
    recorded = source(md5='0' * 32)  # what upstream published: this copy fails it
    fetch = fetcher(tmp_path, server, recorded, checksums=listed)
    assert fetch.fetch('blob').read_bytes() == PAYLOAD
    assert 'verifying {} against the checksums declared in {}, not the published ' \
           'ones ...'.format(tmp_path / 'downloads' / 'blob.bin.part', listed) in said(fetch)
    assert Fetcher(tmp_path / 'x', sources={'blob': recorded}).sources['blob'].md5 == '0' * 32

    # Verification stays on: a copy that differs from the declared checksum is refused.
    listed.write_text('{} *blob.bin\n'.format(hashlib.md5(b'another file').hexdigest()))
    monkeypatch.setenv('FCN_CHECKSUMS', str(listed))
    with pytest.raises(FetchError, match=r'blob.bin fails its checksum twice .*md5 {} '
                                         r'\(expected {} as declared in {}\)'.format(
                                             hashlib.md5(PAYLOAD).hexdigest(),
                                             hashlib.md5(b'another file').hexdigest(), listed)):
        fetcher(tmp_path / 'again', server, recorded).fetch('blob')


def test_a_malformed_checksum_list_names_its_line(tmp_path, server):
    listed = tmp_path / 'own.md5'
    listed.write_text('{}  blob.bin\nabc  blob.bin\n'.format('a' * 32))
    with pytest.raises(FetchError, match=r'own.md5 line 2: expected "<md5, sha1 or sha256 hex digest>'):
        fetcher(tmp_path, server, checksums=listed)
    with pytest.raises(FetchError, match='cannot read the checksum list'):
        fetcher(tmp_path, server, checksums=tmp_path / 'missing.md5')


def test_every_recorded_source_is_well_formed():
    for key, recorded in SOURCES.items():
        assert recorded.key == key and recorded.url.endswith('/' + recorded.filename)
        assert recorded.md5 is None or len(recorded.md5) == 32
    assert SOURCES['voc2011'].md5 == '6c3384ef61512963050cb5d687e5bf1e'
    assert SOURCES['sbd'].md5 == '82b4d87ceb2ed10f6038a1cba92111cb'


# ---- extraction ---------------------------------------------------------------------------

@pytest.mark.parametrize('name, kind, linkname', [
    ('../escaped.txt', tarfile.REGTYPE, ''),
    ('/tmp/absolute-fcn-test.txt', tarfile.REGTYPE, ''),
    ('inside/link', tarfile.SYMTYPE, '../../escaped.txt'),
    ('inside/hard', tarfile.LNKTYPE, '/etc/passwd'),
    ('inside/device', tarfile.CHRTYPE, ''),
])
def test_unsafe_tar_members_are_refused(tmp_path, name, kind, linkname):
    archive = tar_with_member(tmp_path / 'evil.tar', name, kind, linkname)
    with pytest.raises(ExtractError, match=r"evil.tar: refusing member '{}'".format(name)):
        extract(archive, tmp_path / 'out')
    assert not (tmp_path / 'escaped.txt').exists()
    assert not os.path.lexists('/tmp/absolute-fcn-test.txt')


@pytest.mark.parametrize('name', ['../escaped.txt', '/absolute.txt', 'a/../../escaped.txt',
                                  'C:/windows.txt'])
def test_unsafe_zip_members_are_refused(tmp_path, name):
    archive = tmp_path / 'evil.zip'
    with zipfile.ZipFile(archive, 'w') as bundle:
        bundle.writestr('fine.txt', 'ok')
        bundle.writestr(zipfile.ZipInfo(name), 'x')
    with pytest.raises(ExtractError, match="evil.zip: refusing member '{}'".format(name)):
        extract(archive, tmp_path / 'out')
    assert not (tmp_path / 'out' / 'fine.txt').exists()
    assert not (tmp_path / 'escaped.txt').exists()


def test_safe_archives_unpack(tmp_path):
    archive = tmp_path / 'good.tgz'
    with tarfile.open(archive, 'w:gz') as tar:
        for name, data in (('top/a.txt', b'a'), ('top/sub/b.txt', b'b')):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        link = tarfile.TarInfo('top/sub/link')
        link.type, link.linkname = tarfile.SYMTYPE, '../a.txt'
        tar.addfile(link)
    extract(archive, tmp_path / 'out', out=io.StringIO())
    assert (tmp_path / 'out/top/sub/link').read_text() == 'a'
    assert find_root(tmp_path / 'out', ['sub/b.txt', 'a.txt'], 'good.tgz') == tmp_path / 'out/top'


@pytest.mark.parametrize('separator', ['/', '\\'])
def test_zip_members_unpack_into_folders_with_either_separator(tmp_path, separator):
    """SIFT Flow's zip may name its members Images\\...\\x.jpg, as Windows tools write them."""
    archive = tmp_path / 'scenes.zip'
    with zipfile.ZipFile(archive, 'w') as bundle:
        bundle.writestr(separator.join(['Images', 'scenes', '']), '')
        bundle.writestr(separator.join(['Images', 'scenes', 'coast.jpg']), 'jpeg bytes')
        bundle.writestr('TestSet1.txt', 'scenes\\coast.jpg')
    extract(archive, tmp_path / 'out', out=io.StringIO())
    assert sorted(str(path.relative_to(tmp_path / 'out')) for path in
                  (tmp_path / 'out').rglob('*')) == ['Images', 'Images/scenes',
                                                     'Images/scenes/coast.jpg', 'TestSet1.txt']
    assert (tmp_path / 'out/Images/scenes/coast.jpg').read_text() == 'jpeg bytes'


def test_damaged_and_foreign_files_are_reported(tmp_path):
    archive = tmp_path / 'cut.tgz'
    with tarfile.open(archive, 'w:gz') as tar:
        member = tarfile.TarInfo('big.bin')
        member.size = 200000
        tar.addfile(member, io.BytesIO(os.urandom(200000)))
    archive.write_bytes(archive.read_bytes()[:50000])
    with pytest.raises(ExtractError, match='cut.tgz is damaged'):
        extract(archive, tmp_path / 'out', out=io.StringIO())
    (tmp_path / 'notes.txt').write_text('hello')
    with pytest.raises(ExtractError, match='notes.txt is neither a tar nor a zip'):
        extract(tmp_path / 'notes.txt', tmp_path / 'out')


def test_find_root_needs_exactly_one_shallowest_match(tmp_path):
    for folder in ('x/one/JPEGImages', 'x/two/JPEGImages'):
        (tmp_path / folder).mkdir(parents=True)
    with pytest.raises(ExtractError, match='voc.tar holds no folder with ImageSets'):
        find_root(tmp_path, ['ImageSets'], 'voc.tar')
    with pytest.raises(ExtractError, match='voc.tar holds several folders with JPEGImages'):
        find_root(tmp_path, ['JPEGImages'], 'voc.tar')
