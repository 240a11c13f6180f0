"""Downloads that resume, show their progress and prove their checksum.

Fetcher.fetch(source) returns the path of a verified copy of a source file:
1. a copy in one of the local archive folders (--archives), if its checksum holds;
2. else the copy in the downloads folder, if complete and its checksum holds (a
   corrupt one is deleted and fetched again);
3. else a download into <file>.part, resumed with an HTTP Range request after an
   interruption, renamed to <file> only once complete and verified.
The URL of a source is, first to last: --url KEY=URL, $FCN_URL_<KEY>,
<mirror>/<file name> (--mirror or $FCN_DATA_MIRROR), the upstream URL.

A copy is verified against the source's published checksums; a source without any is
held to the size and digests of its first accepted copy, recorded next to it in the
downloads folder as <file>.digests.json.

Copies of one's own making (re-packed archives, the rehearsal's made-up datasets and
classifiers) are verified against checksums their maker declares in a list (--checksums
FILE or $FCN_CHECKSUMS, lines as md5sum, sha1sum or sha256sum print them): for the files
it names, those replace the published ones, and the fetcher says so.
"""
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

from data.sources import SOURCES
from fcn.progress import BYTES, Progress

CHUNK = 1 << 20
CHECKSUMS = ('md5', 'sha1', 'sha256')
RECORD_SUFFIX = '.digests.json'
# The checksum kinds, by the length of their hex digest.
DIGEST_KINDS = {32: 'md5', 40: 'sha1', 64: 'sha256'}


class FetchError(RuntimeError):
    """A download that cannot be completed or verified; the message says what to do."""


def digests(path):
    """Size, md5, sha1 and sha256 of a file, in one pass."""
    hashes = {kind: hashlib.new(kind) for kind in CHECKSUMS}
    size = 0
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(CHUNK), b''):
            size += len(chunk)
            for hashed in hashes.values():
                hashed.update(chunk)
    return dict(size=size, **{kind: hashed.hexdigest() for kind, hashed in hashes.items()})


def mismatches(expected, found, origin=''):
    """What of `expected` (size or checksum kind -> value) the found digests contradict,
    as text ('' if all hold); `origin` says where the expected values come from."""
    return ', '.join('{} {} (expected {}{})'.format(kind, found[kind], value, origin)
                     for kind, value in expected.items() if found[kind] != value)


def read_checksum_list(path):
    """{file name: {kind: hex digest}} from a list in the format md5sum and sha256sum
    print: '<hex digest>  <file name>' a line, the kind told by the digest's length."""
    declared = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise FetchError('cannot read the checksum list {} ({})'.format(path, error)) from None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith('#'):
            continue
        match = re.fullmatch(r'([0-9a-fA-F]+) [ *](.+)', line.strip())
        kind = match and DIGEST_KINDS.get(len(match.group(1)))
        if not kind:
            raise FetchError('{} line {}: expected "<md5, sha1 or sha256 hex digest>  <file '
                             'name>", got {!r}'.format(path, number, line))
        declared.setdefault(match.group(2), {})[kind] = match.group(1).lower()
    return declared


def with_declared_checksums(sources, declared):
    """The sources, those whose file `declared` names holding its checksums instead."""
    return {key: replace(source, **{kind: declared[source.filename].get(kind)
                                    for kind in CHECKSUMS})
            if source.filename in declared else source for key, source in sources.items()}


class Fetcher:
    """Gets verified copies of the files in `sources` into `downloads`.

    archives: folders that may already hold some of the files (used in place).
    mirror:   a base URL that serves every file by its name.
    urls:     key -> URL overrides.
    checksums: a checksum list (see read_checksum_list) whose checksums replace the
              published ones of the files it names.
    """

    def __init__(self, downloads, archives=(), mirror=None, urls=None, sources=SOURCES,
                 attempts=4, retry_wait=2.0, out=None, checksums=None):
        self.downloads = Path(downloads)
        self.archives = [Path(folder) for folder in archives]
        self.mirror = mirror or os.environ.get('FCN_DATA_MIRROR')
        self.urls = dict(urls or {})
        unknown = sorted(set(self.urls) - set(sources))
        if unknown:
            raise FetchError('--url names unknown source {!r} (known: {})'.format(
                unknown[0], ', '.join(sorted(sources))))
        self.attempts, self.retry_wait = attempts, retry_wait
        self.out = out or sys.stdout
        self.checksum_list = checksums or os.environ.get('FCN_CHECKSUMS')
        self.declared = read_checksum_list(self.checksum_list) if self.checksum_list else {}
        self.sources = with_declared_checksums(sources, self.declared)

    def say(self, message):
        print(message, file=self.out, flush=True)

    def url(self, source):
        override = self.urls.get(source.key) or os.environ.get('FCN_URL_' + source.key.upper())
        if override:
            return override
        if self.mirror:
            return self.mirror.rstrip('/') + '/' + source.filename
        return source.url

    def fetch(self, key):
        """The path of a verified copy of source `key`."""
        source = self.sources[key]
        for folder in self.archives:
            local = folder / source.filename
            if local.is_file():
                problem, found = self.check(source, local)
                if not problem:
                    self.say('using {}'.format(local))
                    return self.accept(source, local, found, local)
                self.say('ignoring {}: {}'.format(local, problem))
        target = self.downloads / source.filename
        if target.is_file():
            problem, found = self.check(source, target)
            if not problem:
                return self.accept(source, target, found, target)
            self.say('{} is corrupt ({}): fetching it again'.format(target, problem))
            target.unlink()
        self.downloads.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + '.part')
        for fresh_start in (False, True):
            if fresh_start:
                part.unlink()
            self.download(source, part)
            problem, found = self.check(source, part)
            if not problem:
                os.replace(part, target)
                return self.accept(source, target, found, self.url(source))
            self.say('{} failed verification ({})'.format(self.url(source), problem))
        part.unlink()  # another file than the one asked for: nothing to resume
        _, recorded = self.expected(source)
        hint = '' if recorded is None else (
            '; if the file changed upstream, delete {} to accept the new one'.format(
                self.record_path(source)))
        raise FetchError('{} fails its checksum twice from {} ({}): the server holds another '
                         'file; point --url {}=URL or --mirror at a genuine copy{}'.format(
                             source.filename, self.url(source), problem, source.key, hint))

    def record_path(self, source):
        """The size and digests of the first accepted copy of a source without published
        checksums, kept next to it in the downloads folder."""
        return self.downloads / (source.filename + RECORD_SUFFIX)

    def expected(self, source):
        """(kind -> value of a genuine copy, its record file or None if published): the
        published checksums, else the record of the first copy, else ({}, None)."""
        published = {kind: getattr(source, kind).lower() for kind in CHECKSUMS
                     if getattr(source, kind)}
        record = self.record_path(source)
        if published or not record.is_file():
            return published, None
        try:
            values = json.loads(record.read_text())
            return {kind: values[kind] for kind in ('size',) + CHECKSUMS}, record
        except (ValueError, KeyError, TypeError) as error:
            raise FetchError('{} is not a record of size and digests ({}): delete it and run '
                             'again'.format(record, error)) from None

    def check(self, source, path):
        """('' if path is a genuine copy of source, else what is wrong with it; its
        digests). Without published or recorded checksums any complete copy passes."""
        declared = source.filename in self.declared
        self.say('verifying {}{} ...'.format(path, ' against the checksums declared in {}, not '
                                             'the published ones'.format(self.checksum_list)
                                             if declared else ''))
        found = digests(path)
        expected, record = self.expected(source)
        origin = ' as declared in {}'.format(self.checksum_list) if declared else \
            '' if record is None else ' as recorded in {}'.format(record)
        return mismatches(expected, found, origin), found

    def accept(self, source, path, found, origin):
        """Return the accepted copy at path; the first copy of a source without published
        checksums has its size and digests recorded (and printed) for later copies."""
        expected, _ = self.expected(source)
        if not expected:
            record = self.record_path(source)
            document = dict(file=source.filename, source=str(origin), **found)
            record.parent.mkdir(parents=True, exist_ok=True)
            partial = record.with_name(record.name + '.partial')
            partial.write_text(json.dumps(document, indent=1) + '\n')
            os.replace(partial, record)
            self.say('NOTE: no checksum is published for {}; recorded its size {} and digests '
                     'md5 {} sha1 {} sha256 {} in {}: later copies must match them. Compare '
                     'them with a trusted copy.'.format(source.filename, found['size'],
                                                        found['md5'], found['sha1'],
                                                        found['sha256'], record))
        return path

    def download(self, source, part):
        """Complete part from the source's URL, resuming what is there."""
        url = self.url(source)
        for attempt in range(1, self.attempts + 1):
            have = part.stat().st_size if part.exists() else 0
            try:
                if self.transfer(url, part, have, source.filename):
                    return
                problem = 'the connection closed early'
            except urllib.error.HTTPError as error:
                if error.code == 416 and have:
                    # Asked to resume at or past the end: what is there may be complete.
                    if have == content_range_total(error.headers.get('Content-Range')):
                        return
                    part.unlink()
                    problem = 'the partial file is longer than the file on the server'
                elif error.code < 500:
                    raise FetchError('{}: HTTP {} {}: set --url {}=URL, --mirror or --archives '
                                     'to another copy of {}'.format(url, error.code, error.reason,
                                                                    source.key, source.filename))
                else:
                    problem = 'HTTP {} {}'.format(error.code, error.reason)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
                problem = str(error)
            if attempt < self.attempts:
                self.say('download of {} interrupted ({}); resuming'.format(source.filename, problem))
                time.sleep(self.retry_wait * attempt)
        raise FetchError('cannot download {} from {} after {} attempts ({}): run again to resume, '
                         'or use --mirror / --archives'.format(source.filename, url, self.attempts,
                                                               problem))

    def transfer(self, url, part, have, label):
        """One request appending to part from byte `have`; True if the file is complete."""
        headers = {'User-Agent': 'fcn-data-prepare'}
        if have:
            headers['Range'] = 'bytes={}-'.format(have)
        if not have:
            self.say('downloading {}'.format(url))
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            if have and response.status == 206:
                start = content_range_start(response.headers.get('Content-Range'))
                if start != have:
                    raise FetchError('{} answered a resume from byte {} with a range starting at {}'
                                     .format(url, have, start))
                total = content_range_total(response.headers.get('Content-Range'))
                mode = 'ab'
            else:
                # No range support (200): start over.
                have, mode = 0, 'wb'
                length = response.headers.get('Content-Length')
                total = int(length) if length and length.isdigit() else None
            progress = Progress(label, total, have, unit=BYTES)
            with open(part, mode) as stream:
                for chunk in iter(lambda: response.read(CHUNK), b''):
                    stream.write(chunk)
                    progress.update(len(chunk))
            progress.finish()
        return total is None or part.stat().st_size == total


def content_range_start(header):
    match = re.match(r'bytes (\d+)-', header or '')
    return int(match.group(1)) if match else None


def content_range_total(header):
    match = re.search(r'/(\d+)$', header or '')
    return int(match.group(1)) if match else None


def place(fetcher, key, destination):
    """A verified copy of a single (unarchived) source file at destination (which may be
    where the fetcher downloads it)."""
    if destination.is_file():
        return
    source = fetcher.fetch(key)
    if source.resolve() == destination.resolve():
        return
    partial = destination.with_name(destination.name + '.partial')
    shutil.copyfile(source, partial)
    os.replace(partial, destination)
