"""Made-up datasets in the real layouts and archives, and a local HTTP server for them.

The tests build tiny ones (a few pixels an image); the rehearsal (checks/rehearsal.py)
builds them at the real image sizes and serves them to `make data-<dataset>` as a mirror.
Every builder returns the truth it wrote: id -> arrays as a reader decodes them, so that
tests compute the expected layer outputs independently.

Archive layouts, as published: VOC2011's tar starts at TrainVal/VOCdevkit/VOC2011/,
VOC2010's at VOCdevkit/VOC2010/, SBD's at benchmark_RELEASE/dataset/, NYUDv2's at nyud/;
SiftFlowDataset.zip and PASCAL-Context's trainval.tar.gz have no wrapper folder.
"""
import mimetypes
import re
import shutil
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import scipy.io
from PIL import Image

from data.sources import SOURCES

SIFTFLOW_SCENES = 'spatial_envelope_256x256_static_8outdoorcategories'

# The 59 PASCAL-Context task classes, as 59_labels.txt spells them.
CONTEXT_TASK = ('aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse '
                'motorbike person pottedplant sheep sofa train tvmonitor bag bed bench book '
                'building cabinet ceiling clothes computer cup door fence floor flower food grass '
                'ground keyboard light mountain mouse curtain platform sign plate road rock shelves '
                'sidewalk sky snow bedcloth track tree truck wall water window wood').split()
CONTEXT_SPELLING = {'diningtable': 'table', 'bedcloth': 'bedclothes', 'clothes': 'cloth'}


def tiny_size(index):
    """(height, width) of a test image: sizes differ from image to image so that reshaping
    is exercised."""
    return 3 + index % 3, 4 + (2 * index) % 5


def cycling(*sizes):
    """(height, width) from a list of real sizes, in turn."""
    return lambda index: sizes[index % len(sizes)]


# Real sizes. PASCAL images (VOC, SBD, VOC2010 for PASCAL-Context) are at most 500 pixels
# a side, most 500x375 or 375x500; the first image of every list is the largest, so that the
# first val images a short run scores include the worst case for memory. NYUDv2 as the
# reference packed it: 425x560 after Gupta et al.'s crop of the 480x640 frames. SIFT Flow:
# 256x256.
PASCAL_SIZES = cycling((500, 500), (375, 500), (500, 375), (333, 500), (500, 334), (375, 500))
NYUD_SIZE = cycling((425, 560))
SIFTFLOW_SIZE = cycling((256, 256))


def unique(ids_by_split):
    seen = []
    for ids in ids_by_split.values():
        seen.extend(i for i in ids if i not in seen)
    return seen


def write_rgb(path, rgb):
    """Save an RGB image (JPEG or PNG by suffix); return the pixels as decoded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, 'RGB').save(path, quality=95)
    with Image.open(path) as image:
        return np.array(image)


def voc_palette():
    palette = []
    for index in range(256):
        red = green = blue = 0
        for bit in range(8):
            red |= ((index >> (3 * bit)) & 1) << (7 - bit)
            green |= ((index >> (3 * bit + 1)) & 1) << (7 - bit)
            blue |= ((index >> (3 * bit + 2)) & 1) << (7 - bit)
        palette += [red, green, blue]
    return palette


def write_palette_png(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), 'P')
    image.putpalette(voc_palette())
    image.save(path)


def random_labels(rng, shape, classes, void=255):
    labels = rng.integers(0, classes, shape).astype(np.uint8)
    labels[0, 0] = void
    return labels


def write_lists(folder, ids_by_split):
    folder.mkdir(parents=True, exist_ok=True)
    for split, ids in ids_by_split.items():
        (folder / (split + '.txt')).write_text(''.join(i + '\n' for i in ids))


def make_voc(folder, ids_by_split, seed=0, size=tiny_size):
    """A VOC20xx folder: JPEGImages, SegmentationClass, ImageSets/Segmentation."""
    rng = np.random.default_rng(seed)
    truth = {}
    for index, example_id in enumerate(unique(ids_by_split)):
        shape = size(index)
        rgb = write_rgb(folder / 'JPEGImages' / (example_id + '.jpg'),
                        rng.integers(0, 256, shape + (3,), dtype=np.uint8))
        labels = random_labels(rng, shape, 21)
        write_palette_png(folder / 'SegmentationClass' / (example_id + '.png'), labels)
        truth[example_id] = {'rgb': rgb, 'label': labels}
    write_lists(folder / 'ImageSets' / 'Segmentation', ids_by_split)
    return truth


def make_sbdd(folder, ids_by_split, seed=1, size=tiny_size):
    """An SBD dataset folder: img/, cls/ (GTcls structs), <split>.txt."""
    rng = np.random.default_rng(seed)
    truth = {}
    for index, example_id in enumerate(unique(ids_by_split)):
        shape = size(index + 1)
        rgb = write_rgb(folder / 'img' / (example_id + '.jpg'),
                        rng.integers(0, 256, shape + (3,), dtype=np.uint8))
        labels = rng.integers(0, 21, shape).astype(np.uint8)
        (folder / 'cls').mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(folder / 'cls' / (example_id + '.mat'), {'GTcls': {
            'Segmentation': labels, 'Boundaries': np.zeros((1, 1)), 'CategoriesPresent': [1]}})
        truth[example_id] = {'rgb': rgb, 'label': labels}
    write_lists(folder, ids_by_split)
    return truth


def make_nyud(folder, ids_by_split, seed=2, lists='txt', size=tiny_size):
    """An NYUDv2 folder as the reference packed it. lists: 'txt' (ids) or 'mat'
    (variable split_ids holding img_<id> names)."""
    rng = np.random.default_rng(seed)
    truth = {}
    for index, example_id in enumerate(unique(ids_by_split)):
        shape = size(index)
        name = 'img_{}'.format(example_id)
        color = write_rgb(folder / 'data/images' / (name + '.png'),
                          rng.integers(0, 256, shape + (3,), dtype=np.uint8))
        hha = write_rgb(folder / 'data/hha' / (name + '.png'),
                        rng.integers(0, 256, shape + (3,), dtype=np.uint8))
        depth = rng.integers(400, 10000, shape).astype(np.uint16)
        (folder / 'data/depth').mkdir(parents=True, exist_ok=True)
        Image.fromarray(depth).save(folder / 'data/depth' / (name + '.png'))
        raw = rng.integers(0, 41, shape).astype(np.uint8)
        raw[0, 0] = 0
        (folder / 'segmentation').mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(folder / 'segmentation' / (name + '.mat'), {'segmentation': raw})
        truth[example_id] = {'color': color, 'hha': hha, 'depth': depth, 'raw': raw}
    if lists == 'txt':
        write_lists(folder, ids_by_split)
    else:
        for split, ids in ids_by_split.items():
            names = np.array([['img_' + i] for i in ids], dtype=object)
            scipy.io.savemat(folder / (split + '.mat'), {'split_ids': names})
    return truth


def make_siftflow(folder, test_ids, trainval_ids, unannotated=(), seed=3, size=tiny_size):
    """A SIFT Flow folder as SiftFlowDataset.zip unpacks; `unannotated` ids get
    all-void semantic labels. TestSet1.txt uses Windows separators, as the original."""
    rng = np.random.default_rng(seed)
    truth = {}
    for index, example_id in enumerate(list(test_ids) + list(trainval_ids)):
        shape = size(index)
        rgb = write_rgb(folder / 'Images' / SIFTFLOW_SCENES / (example_id + '.jpg'),
                        rng.integers(0, 256, shape + (3,), dtype=np.uint8))
        semantic = rng.integers(0, 34, shape).astype(np.int32)
        semantic[0, 0] = 0
        if example_id in unannotated:
            semantic[...] = 0
        geometric = rng.choice([-1.0, 1.0, 2.0, 3.0], shape)
        for kind, labels in (('SemanticLabels', semantic), ('GeoLabels', geometric)):
            (folder / kind / SIFTFLOW_SCENES).mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(folder / kind / SIFTFLOW_SCENES / (example_id + '.mat'),
                             {'S': labels, 'names': np.array(['awning'], dtype=object)})
        truth[example_id] = {'rgb': rgb, 'sem': semantic, 'geo': geometric}
    (folder / 'TestSet1.txt').write_text(''.join(
        '{}\\{}.jpg\n'.format(SIFTFLOW_SCENES, i) for i in test_ids))
    return truth


def context_full_labels():
    """A full label list in the labels.txt form: the task classes under their
    full-list spelling (some with spaces), scattered among other labels."""
    full = ['accordion', 'air conditioner']
    for index, label in enumerate(CONTEXT_TASK):
        full.append({'pottedplant': 'potted plant', 'tvmonitor': 'tv monitor'}.get(
            label, CONTEXT_SPELLING.get(label, label)))
        if index % 7 == 0:
            full.append('extra label {}'.format(index))
    return {number: label for number, label in enumerate(full, 1)}


def make_context(voc_folder, context_folder, ids_by_split, seed=4, size=tiny_size):
    """A VOC2010 folder (JPEGImages, ImageSets/Main) and a PASCAL-Context folder
    (trainval/<id>.mat with LabelMap, labels.txt, 59_labels.txt)."""
    rng = np.random.default_rng(seed)
    full = context_full_labels()
    (context_folder / 'trainval').mkdir(parents=True, exist_ok=True)
    truth = {}
    for index, example_id in enumerate(unique(ids_by_split)):
        shape = size(index)
        rgb = write_rgb(voc_folder / 'JPEGImages' / (example_id + '.jpg'),
                        rng.integers(0, 256, shape + (3,), dtype=np.uint8))
        label_map = rng.integers(1, len(full) + 1, shape).astype(np.uint16)
        scipy.io.savemat(context_folder / 'trainval' / (example_id + '.mat'),
                         {'LabelMap': label_map})
        truth[example_id] = {'rgb': rgb, 'full': label_map}
    write_lists(voc_folder / 'ImageSets' / 'Main', ids_by_split)
    (context_folder / 'labels.txt').write_text(''.join(
        '{}: {}\n'.format(number, label) for number, label in full.items()))
    (context_folder / '59_labels.txt').write_text(''.join(
        '{}: {}\n'.format(number, label) for number, label in enumerate(CONTEXT_TASK, 1)))
    return truth


# ---- archives ----------------------------------------------------------------------------

def tar_folder(folder, archive, arcname, compression=''):
    """Pack folder into archive under the member prefix arcname ('' for none)."""
    with tarfile.open(archive, 'w' + (':' + compression if compression else '')) as tar:
        if arcname:
            tar.add(folder, arcname=arcname)
        else:
            for path in sorted(Path(folder).iterdir()):
                tar.add(path, arcname=path.name)
    return archive


def zip_folder(folder, archive, arcname=''):
    with zipfile.ZipFile(archive, 'w') as bundle:
        for path in sorted(Path(folder).rglob('*')):
            bundle.write(path, str(Path(arcname) / path.relative_to(folder)))
    return archive


def write_archives(served, stage, ids, size=None, nyud_lists='txt', unannotated=()):
    """Every dataset download (data/sources.py), packed as upstream packs it, into `served`
    under its published file name; `stage` is scratch space. Returns the truth by dataset.

    ids: {'voc': VOC2011 segmentation splits, 'sbd': SBD splits, 'nyud': NYUDv2 splits,
          'siftflow': {'test': [...], 'trainval': [...]}, 'context': VOC2010 Main splits},
    size: dataset -> (index -> (height, width)), tiny where not given; unannotated: SIFT
    Flow ids whose semantic labels are all void."""
    size = size or {}
    stage, served = Path(stage), Path(served)
    served.mkdir(parents=True, exist_ok=True)
    truth = {
        'voc': make_voc(stage / 'VOC2011', ids['voc'], size=size.get('voc', tiny_size)),
        'sbd': make_sbdd(stage / 'sbd', ids['sbd'], size=size.get('voc', tiny_size)),
        'nyud': make_nyud(stage / 'nyud', ids['nyud'], lists=nyud_lists,
                          size=size.get('nyud', tiny_size)),
        'siftflow': make_siftflow(stage / 'sift', ids['siftflow']['test'],
                                  ids['siftflow']['trainval'], unannotated=unannotated,
                                  size=size.get('siftflow', tiny_size)),
        'context': make_context(stage / 'VOC2010', stage / 'context', ids['context'],
                                size=size.get('pascalcontext', tiny_size)),
    }

    def target(key):
        return served / SOURCES[key].filename

    shutil.move(stage / 'context' / '59_labels.txt', target('context59'))
    tar_folder(stage / 'VOC2011', target('voc2011'), 'TrainVal/VOCdevkit/VOC2011')
    tar_folder(stage / 'sbd', target('sbd'), 'benchmark_RELEASE/dataset', 'gz')
    tar_folder(stage / 'nyud', target('nyud'), 'nyud', 'gz')
    zip_folder(stage / 'sift', target('siftflow'))
    tar_folder(stage / 'VOC2010', target('voc2010'), 'VOCdevkit/VOC2010')
    tar_folder(stage / 'context', target('context'), '', 'gz')
    return truth


# ---- a local HTTP server ---------------------------------------------------------------------

class FileServer:
    """Serves the files of a folder on 127.0.0.1 while its `with` block runs (at most
    `lifetime` seconds, if given), with HTTP Range support; files are streamed, so large
    ones cost no memory.

    drop_after: file name -> bytes sent before the connection is cut (once).
    ranges:     False to ignore Range headers (a server without resume).
    requests:   (file name, Range header or None) of every GET.
    """

    def __init__(self, folder, lifetime=None):
        self.folder = Path(folder)
        self.lifetime = lifetime
        self.drop_after = {}
        self.ranges = True
        self.requests = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.answer(self)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = 'http://127.0.0.1:{}'.format(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.timer = None

    def __enter__(self):
        self.thread.start()
        if self.lifetime:
            self.timer = threading.Timer(self.lifetime, self.httpd.shutdown)
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, *exc):
        if self.timer:
            self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, handler):
        name = unquote(handler.path.lstrip('/'))
        wanted = handler.headers.get('Range')
        self.requests.append((name, wanted))
        path = self.folder / name
        if '..' in Path(name).parts or not path.is_file():
            handler.send_error(404)
            return
        length = path.stat().st_size
        start = 0
        match = re.fullmatch(r'bytes=(\d+)-', wanted or '')
        if self.ranges and match:
            start = int(match.group(1))
            if start >= length:
                handler.send_response(416)
                handler.send_header('Content-Range', 'bytes */{}'.format(length))
                handler.send_header('Content-Length', '0')
                handler.end_headers()
                return
            handler.send_response(206)
            handler.send_header('Content-Range', 'bytes {}-{}/{}'.format(
                start, length - 1, length))
        else:
            handler.send_response(200)
        # pip reads a page of links only when it says it is HTML.
        handler.send_header('Content-Type', mimetypes.guess_type(name)[0]
                            or 'application/octet-stream')
        handler.send_header('Content-Length', str(length - start))
        handler.end_headers()
        remaining = self.drop_after.pop(name, length - start)
        with open(path, 'rb') as stream:
            stream.seek(start)
            while remaining > 0:
                chunk = stream.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                try:
                    handler.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                remaining -= len(chunk)
