"""Prepare the FCN datasets under the data root ($FCN_DATA_DIR, else <repo>/data).

    python -m data.prepare voc             # PASCAL VOC2011 + SBD, seg11valid split
    python -m data.prepare nyud            # NYUDv2 (Gupta et al. 40 classes, HHA)
    python -m data.prepare siftflow        # SIFT Flow, trainval/test splits
    python -m data.prepare pascalcontext   # VOC2010 + PASCAL-Context 59 classes
    python -m data.prepare --weights voc-fcn8s vgg16
                                           # published weights (models/weights.py)
    python -m data.prepare --list          # every source: key, file, URL, checksum

Every step is idempotent: a finished step is skipped (its output exists), an
interrupted download resumes, an interrupted unpacking starts over, a corrupt
archive is fetched again. Archives go to <data root>/downloads/ and may be deleted
once a dataset is prepared. --archives DIR uses archives already on disk.

Results (the layers' layouts, see layers/*.py):
    voc            pascal/VOC2011/ (+ ImageSets/Segmentation/seg11valid.txt), sbdd/dataset/
    nyud           nyud/ with trainval.txt, test.txt (and train.txt, val.txt)
    siftflow       sift-flow/ with trainval.txt, test.txt
    pascalcontext  pascal/VOC2010/, pascal-context/{trainval/, labels.txt, 59_labels.txt}
and a stamp downloads/<dataset>.prepared that the Make targets depend on.

--weights NET fetches the caffemodel published for a net of the model table: an ILSVRC
classifier into weights/<file>, a released FCN into weights/released/<file>; named by a
path ending in its published file name (as the Makefile's rules do), it is fetched to that
path. The same overrides apply.
"""
import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from fcn.errors import run_command
from fcn.paths import data_root
from data.extract import ExtractError, extract, find_root
from data.fetch import FetchError, Fetcher, place
from data.sources import SOURCES
from data import weights as published

# Split sizes of the reference release, reported beside what was derived.
REFERENCE_COUNTS = {
    'seg11valid': 736, 'nyud trainval': 795, 'nyud test': 654,
    'siftflow trainval': 2486, 'siftflow test': 200,
    'context train': 4998, 'context val': 5105,
}

SIFTFLOW_SCENES = 'spatial_envelope_256x256_static_8outdoorcategories'


class PrepareError(RuntimeError):
    """A dataset that cannot be prepared as asked; the message says what to do."""


def write_lines(path, lines):
    """Write a list file atomically."""
    partial = path.with_name(path.name + '.partial')
    partial.write_text(''.join(line + '\n' for line in lines))
    os.replace(partial, path)


def read_lines(path):
    try:
        return Path(path).read_text().split()
    except FileNotFoundError:
        raise PrepareError('{} is missing: the archive is not what was expected'.format(path)) \
            from None


def report(fetcher, what, count):
    reference = REFERENCE_COUNTS.get(what)
    note = '' if reference is None else ' (the reference has {})'.format(reference)
    fetcher.say('{}: {} ids{}'.format(what, count, note))


def unpack(fetcher, key, target, required):
    """Step: the part of archive `key` holding `required` becomes folder `target`.

    The folder appears in one rename once complete, so an existing target is a
    finished step (or a copy the user already had, if it holds `required`)."""
    if target.is_dir():
        missing = [item for item in required if not (target / item).exists()]
        if missing:
            raise PrepareError('{} exists but lacks {}: move it away and run again'.format(
                target, ', '.join(missing)))
        fetcher.say('{} is in place'.format(target))
        return
    archive = fetcher.fetch(key)
    staging = target.with_name('.{}.unpacking'.format(target.name))
    if staging.exists():
        shutil.rmtree(staging)  # an interrupted unpacking starts over
    fetcher.say('unpacking {} into {}'.format(archive.name, target))
    extract(archive, staging)
    root = find_root(staging, required, archive.name)
    os.replace(root, target)
    if root != staging:
        shutil.rmtree(staging)


# ---- the datasets ---------------------------------------------------------------------

def prepare_voc(fetcher, root):
    """VOC2011 (images, seg val) and SBD (training set); seg11valid = VOC2011 seg val
    minus SBD train, the reference's validation set."""
    voc = root / 'pascal' / 'VOC2011'
    sbdd = root / 'sbdd' / 'dataset'
    voc.parent.mkdir(parents=True, exist_ok=True)
    sbdd.parent.mkdir(parents=True, exist_ok=True)
    unpack(fetcher, 'voc2011', voc,
           ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation/val.txt'))
    unpack(fetcher, 'sbd', sbdd, ('img', 'cls', 'train.txt', 'val.txt'))
    seg11valid = voc / 'ImageSets' / 'Segmentation' / 'seg11valid.txt'
    if not seg11valid.exists():
        sbd_train = set(read_lines(sbdd / 'train.txt'))
        ids = [i for i in read_lines(voc / 'ImageSets/Segmentation/val.txt') if i not in sbd_train]
        write_lines(seg11valid, ids)
    report(fetcher, 'seg11valid', len(read_lines(seg11valid)))


def prepare_nyud(fetcher, root):
    """NYUDv2 as the reference release packed it; split lists as .txt (ids) or as
    .mat (variable split_ids, names img_<id>), trainval = train + val if absent."""
    nyud = root / 'nyud'
    nyud.parent.mkdir(parents=True, exist_ok=True)
    unpack(fetcher, 'nyud', nyud, ('data/images', 'data/depth', 'data/hha', 'segmentation'))
    splits = {}
    for split in ('train', 'val', 'trainval', 'test'):
        listed = nyud / (split + '.txt')
        packed = nyud / (split + '.mat')
        if listed.exists():
            splits[split] = read_lines(listed)
        elif packed.exists():
            splits[split] = nyud_ids_from_mat(packed)
            write_lines(listed, splits[split])
    if 'trainval' not in splits and 'train' in splits and 'val' in splits:
        splits['trainval'] = splits['train'] + splits['val']
        write_lines(nyud / 'trainval.txt', splits['trainval'])
    for split in ('trainval', 'test'):
        if split not in splits:
            raise PrepareError('{} has no {} split ({}.txt or {}.mat): the archive is not the '
                               'reference NYUDv2 release'.format(nyud, split, split, split))
        missing = [i for i in splits[split] if not (nyud / 'data/images/img_{}.png'.format(i)).exists()]
        if missing:
            raise PrepareError('{} lists {} ids without data/images/img_<id>.png, e.g. {}'.format(
                nyud / (split + '.txt'), len(missing), missing[0]))
        report(fetcher, 'nyud ' + split, len(splits[split]))


def nyud_ids_from_mat(path):
    import scipy.io  # only datasets need it: fetching weights runs without it (venv-infer)
    names = scipy.io.loadmat(str(path)).get('split_ids')
    if names is None:
        raise PrepareError('{} has no variable split_ids'.format(path))
    return [str(np.squeeze(name)).removeprefix('img_') for name in np.ravel(names)]


def prepare_siftflow(fetcher, root):
    """SIFT Flow; test = the images of TestSet1.txt, trainval = the rest; images
    whose semantic or geometric labels are missing or entirely void are left out."""
    siftflow = root / 'sift-flow'
    siftflow.parent.mkdir(parents=True, exist_ok=True)
    images = 'Images/' + SIFTFLOW_SCENES
    unpack(fetcher, 'siftflow', siftflow,
           (images, 'SemanticLabels/' + SIFTFLOW_SCENES, 'GeoLabels/' + SIFTFLOW_SCENES,
            'TestSet1.txt'))
    trainval, test = siftflow / 'trainval.txt', siftflow / 'test.txt'
    if not (trainval.exists() and test.exists()):
        # TestSet1.txt names files with Windows separators: scenes\coast_arnat59.jpg
        test_ids = [Path(line.replace('\\', '/')).stem
                    for line in (siftflow / 'TestSet1.txt').read_text().split()]
        all_ids = sorted(path.stem for path in (siftflow / images).glob('*.jpg'))
        unknown = sorted(set(test_ids) - set(all_ids))
        if unknown:
            raise PrepareError('TestSet1.txt names {} images that are not in {}, e.g. {}'.format(
                len(unknown), siftflow / images, unknown[0]))
        unannotated = [i for i in all_ids if not siftflow_annotated(siftflow, i)]
        if unannotated:
            fetcher.say('left out, no annotation: {}'.format(', '.join(unannotated)))
        left_out = set(test_ids) | set(unannotated)
        write_lines(test, [i for i in test_ids if i not in unannotated])
        write_lines(trainval, [i for i in all_ids if i not in left_out])
    report(fetcher, 'siftflow trainval', len(read_lines(trainval)))
    report(fetcher, 'siftflow test', len(read_lines(test)))


def siftflow_annotated(siftflow, example_id):
    for folder, void in (('SemanticLabels', (0,)), ('GeoLabels', (-1, 0))):
        path = siftflow / folder / SIFTFLOW_SCENES / (example_id + '.mat')
        if not path.exists():
            return False
        import scipy.io
        labels = scipy.io.loadmat(str(path)).get('S')
        if labels is None or np.isin(labels, void).all():
            return False
    return True


def prepare_pascalcontext(fetcher, root):
    """VOC2010 images and split lists with the PASCAL-Context annotations and names."""
    voc = root / 'pascal' / 'VOC2010'
    context = root / 'pascal-context'
    voc.parent.mkdir(parents=True, exist_ok=True)
    unpack(fetcher, 'voc2010', voc, ('JPEGImages', 'ImageSets/Main/train.txt',
                                     'ImageSets/Main/val.txt'))
    unpack(fetcher, 'context', context, ('trainval', 'labels.txt'))
    place(fetcher, 'context59', context / '59_labels.txt')
    for split in ('train', 'val'):
        ids = read_lines(voc / 'ImageSets/Main/{}.txt'.format(split))
        missing = [i for i in ids if not (context / 'trainval' / (i + '.mat')).exists()]
        if missing:
            raise PrepareError('{} ids of VOC2010 {} have no {}/trainval/<id>.mat, e.g. {}'.format(
                len(missing), split, context, missing[0]))
        report(fetcher, 'context ' + split, len(ids))


DATASETS = {
    'voc': prepare_voc,
    'nyud': prepare_nyud,
    'siftflow': prepare_siftflow,
    'pascalcontext': prepare_pascalcontext,
}


def stamp_path(root, dataset):
    return root / 'downloads' / (dataset + '.prepared')


def prepare(dataset, root, fetcher):
    """Run every step of one dataset, then write its stamp."""
    DATASETS[dataset](fetcher, root)
    stamp = stamp_path(root, dataset)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    partial = stamp.with_name(stamp.name + '.partial')
    partial.write_text(json.dumps({'dataset': dataset, 'root': str(root)}) + '\n')
    os.replace(partial, stamp)
    fetcher.say('{} is ready under {}'.format(dataset, root))


# Every source a --url KEY=URL or FCN_URL_<KEY> may name: datasets and weights.
ALL_SOURCES = {**SOURCES, **published.SOURCES}


def weights_target(text):
    """(net, destination) of what --weights `text` names: a net of the weights table,
    fetched to its place (weights/<file>, weights/released/<file>), or a file named as a
    published file, fetched there (as make asks for weights/released/<file>, or for the
    classifiers in another CLASSIFIER_DIR)."""
    if text in published.WEIGHTS:
        return text, published.local_path(text)
    for name, source in published.WEIGHTS.items():
        if Path(text).name == source.filename:
            return name, Path(text)
    raise PrepareError('{!r} names no published weights; nets: {}; files: weights/<file> '
                       '(see --list)'.format(text, ', '.join(published.WEIGHTS)))


def fetch_weights(name, archives=(), mirror=None, urls=None, out=None, destination=None,
                  checksums=None):
    """A verified copy of the weights published for net `name` at `destination` (default:
    its place under weights/)."""
    destination = Path(destination or published.local_path(name))
    fetcher = Fetcher(destination.parent, archives, mirror, urls, sources=ALL_SOURCES, out=out,
                      checksums=checksums)
    place(fetcher, published.WEIGHTS[name].key, destination)
    fetcher.say('{}: {}'.format(name, destination))
    return destination


def list_sources():
    def show(source, where):
        checksums = ', '.join('{} {}'.format(kind, getattr(source, kind))
                              for kind in ('md5', 'sha1', 'sha256') if getattr(source, kind))
        print('{:22} {} ({}) -> {}\n{:22} {}\n{:22} {}{}\n{:22} override: FCN_URL_{}=URL'.format(
            source.key, source.filename, source.size, where, '', source.url, '',
            checksums or 'none published: size and digests recorded at the first download',
            ' [from {}]'.format(source.origin) if source.origin else '', '',
            source.key.upper()))

    print('datasets (python -m data.prepare DATASET):')
    for source in SOURCES.values():
        show(source, 'downloads/')
    print('published weights (python -m data.prepare --weights NET):')
    for name, source in published.WEIGHTS.items():
        show(source, '{} (NET {})'.format(
            published.local_path(name).relative_to(published.REPO), name))


def parse_url_override(text):
    key, equals, url = text.partition('=')
    if not equals or not key or not url:
        raise argparse.ArgumentTypeError('expected KEY=URL, got {!r}'.format(text))
    return key, url


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m data.prepare',
        description='Download, verify, unpack and split the FCN datasets; fetch the '
                    'published weights.',
        epilog='Environment: FCN_DATA_DIR (data root), FCN_DATA_MIRROR (as --mirror), '
               'FCN_ARCHIVES (as --archives, colon-separated), FCN_URL_<KEY> (as --url), '
               'FCN_CHECKSUMS (as --checksums).')
    parser.add_argument('dataset', nargs='?', choices=sorted(DATASETS),
                        help='the dataset to prepare')
    parser.add_argument('--weights', nargs='+', metavar='NET',
                        help='fetch the published weights of these nets instead (a net of '
                             'the model table, or a path ending in its published file name: '
                             'fetched there; see --list)')
    parser.add_argument('--data-dir', type=Path, default=None, metavar='DIR',
                        help='data root (default: $FCN_DATA_DIR, else <repo>/data)')
    parser.add_argument('--archives', type=Path, action='append', default=[], metavar='DIR',
                        help='a folder of already-downloaded archives, used in place '
                             '(repeatable)')
    parser.add_argument('--mirror', metavar='URL',
                        help='base URL serving every archive and weights file by its file name')
    parser.add_argument('--url', type=parse_url_override, action='append', default=[],
                        metavar='KEY=URL', help='the URL of one source (keys: see --list)')
    parser.add_argument('--checksums', type=Path, metavar='FILE',
                        help='verify the files this list names (lines "<md5, sha1 or sha256>  '
                             '<file name>", as md5sum/sha1sum/sha256sum print them) against its '
                             'checksums instead of the published ones: for copies of your own '
                             'making')
    parser.add_argument('--list', action='store_true', help='list the sources and exit')
    args = parser.parse_args(argv)
    if args.list:
        list_sources()
        return 0
    if not args.dataset and not args.weights:
        parser.error('name a dataset ({}), --weights NET or --list'.format(
            ', '.join(sorted(DATASETS))))
    root = (args.data_dir or data_root()).resolve()
    archives = args.archives + [Path(folder) for folder in
                                os.environ.get('FCN_ARCHIVES', '').split(os.pathsep) if folder]
    try:
        for name, destination in [weights_target(text) for text in args.weights or ()]:
            fetch_weights(name, archives, args.mirror, dict(args.url), destination=destination,
                          checksums=args.checksums)
        if args.dataset:
            fetcher = Fetcher(root / 'downloads', archives, args.mirror, dict(args.url),
                              sources=ALL_SOURCES, checksums=args.checksums)
            prepare(args.dataset, root, fetcher)
    except (FetchError, ExtractError, PrepareError) as error:
        print('error: {}'.format(error), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    run_command(main)
