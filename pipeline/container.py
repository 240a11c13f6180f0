#!/usr/bin/env python3
"""The Docker image's entry point: check that the container can write where the pipeline
writes, then run the command (`make voc-fcn8s GPU=0`, ...) in its place.

  container.py COMMAND [ARG...]

The folders are FCN_OUTPUT_DIRS (space-separated; the image sets the data root, the
weights and the runs). A folder mounted read-only is left alone: it is meant to be read.
Any other folder the container cannot write stops it at once, naming the folder, rather
than failing deep inside a pipeline step. The usual cause: a host folder that did not
exist when `docker run` mounted it, which Docker then created as root.
"""
import errno
import os
import sys
import tempfile


def cannot_write(folder):
    """Why the current user cannot create a file in `folder`, or None if it can (or if the
    folder is a read-only mount, which nothing is meant to write)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix='.write-test-'):
            return None
    except OSError as e:
        if e.errno == errno.EROFS:
            return None
        return e.strerror or str(e)


def unwritable_message(folder, why):
    try:
        stats = os.stat(folder)
        owner = (f'it belongs to uid {stats.st_uid}, gid {stats.st_gid}, '
                 f'mode {stats.st_mode & 0o7777:o}')
    except OSError:
        owner = 'it does not exist'
    return (
        f'error: this container (uid {os.getuid()}, gid {os.getgid()}) cannot write {folder}: '
        f'{why}; {owner}.\n'
        f'Create the host folders before `docker run` mounts them (Docker creates a missing\n'
        f'one as root) and run the container as yourself, as the README says:\n'
        f'    mkdir -p data weights runs\n'
        f'    docker run --user "$(id -u):$(id -g)" ...\n'
        f'A folder Docker already created as root is yours again after\n'
        f'    sudo chown "$(id -u):$(id -g)" data weights runs')


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__.strip())
        return 0 if argv else 2
    for folder in os.environ.get('FCN_OUTPUT_DIRS', '').split():
        why = cannot_write(folder)
        if why:
            print(unwritable_message(folder, why), file=sys.stderr)
            return 1
    os.execvp(argv[0], argv)


if __name__ == '__main__':
    sys.exit(main())
