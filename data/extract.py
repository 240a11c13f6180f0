"""Safe unpacking of tar and zip archives.

No member may land outside the destination: absolute paths, ".." components, links
pointing outside and device files are refused (tar: the standard library's "data"
filter, plus absolute names; zip: the names are checked here, and zip links unpack
as plain files).
"""
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from fcn.progress import BYTES, Progress


class ExtractError(RuntimeError):
    """An archive that is unsafe or not what was expected."""


def extract(archive, destination, out=None):
    """Unpack archive (tar, any compression, or zip) into destination."""
    archive, destination = Path(archive), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        extract_zip(archive, destination, out)
    elif tarfile.is_tarfile(archive):
        extract_tar(archive, destination, out)
    else:
        raise ExtractError('{} is neither a tar nor a zip archive: delete it and run again'.format(
            archive))


def extract_tar(archive, destination, out):
    if not hasattr(tarfile, 'data_filter'):
        raise ExtractError('safe tar extraction needs Python 3.11.4 or newer (tarfile filters)')

    def refuse_unsafe(member, path):
        # The data filter would strip a leading "/"; an archive asking for one is refused.
        if member.name.startswith('/'):
            raise ExtractError('{}: refusing member {!r}: absolute path'.format(archive, member.name))
        try:
            return tarfile.data_filter(member, path)
        except tarfile.FilterError as error:
            raise ExtractError('{}: refusing member {!r}: {}'.format(archive, member.name, error)) \
                from None

    size = archive.stat().st_size
    with open(archive, 'rb') as raw, tarfile.open(fileobj=raw, mode='r:*') as tar:
        progress = Progress('unpacking ' + archive.name, size, unit=BYTES, out=out)

        def members():
            for member in tar:
                # The compressed position tells how far through the archive we are.
                progress.update(raw.tell() - progress.done)
                yield member

        try:
            tar.extractall(destination, members=members(), filter=refuse_unsafe)
        except (tarfile.TarError, EOFError, OSError) as error:
            raise ExtractError('{} is damaged ({}): delete it and run again'.format(archive, error)) \
                from None
        progress.finish()


def extract_zip(archive, destination, out):
    """Unpack a zip; member names written with Windows separators (Images\\x.jpg, as some
    Windows tools store them) unpack into folders like those written with '/'."""
    with zipfile.ZipFile(archive) as bundle:
        entries = bundle.infolist()
        paths = []
        for entry in entries:
            parts = PurePosixPath(entry.filename.replace('\\', '/')).parts
            if (entry.filename.startswith(('/', '\\')) or '..' in parts
                    or (parts and ':' in parts[0])):
                raise ExtractError('{}: refusing member {!r}: it would land outside {}'.format(
                    archive, entry.filename, destination))
            paths.append(destination.joinpath(*parts))
        progress = Progress('unpacking ' + archive.name,
                            sum(entry.file_size for entry in entries) or None, unit=BYTES,
                            out=out)
        try:
            for entry, path in zip(entries, paths):
                if entry.filename.endswith(('/', '\\')):
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(entry) as source, open(path, 'wb') as target:
                    shutil.copyfileobj(source, target, 1 << 20)
                progress.update(entry.file_size)
        except (zipfile.BadZipFile, OSError) as error:
            raise ExtractError('{} is damaged ({}): delete it and run again'.format(archive, error)) \
                from None
        progress.finish()


def find_root(folder, required, archive_name):
    """The one folder under `folder` (itself included) holding every relative path in
    `required`: archives differ in how deep they nest their content."""
    folder = Path(folder)
    candidates = [folder] + sorted(path for path in folder.rglob('*') if path.is_dir())
    found = [path for path in candidates if all((path / item).exists() for item in required)]
    if not found:
        raise ExtractError('{} holds no folder with {}: is it the right archive?'.format(
            archive_name, ', '.join(required)))
    shallowest = min(len(path.parts) for path in found)
    roots = [path for path in found if len(path.parts) == shallowest]
    if len(roots) > 1:
        raise ExtractError('{} holds several folders with {}: {}'.format(
            archive_name, ', '.join(required), ', '.join(str(path) for path in roots)))
    return roots[0]
