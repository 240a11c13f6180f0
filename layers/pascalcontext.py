"""PASCAL-Context data layer: the 59 most frequent classes plus background.

Layout:
    <voc_dir>/ImageSets/Main/<split>.txt   the VOC2010 folder: train (4998), val (5105)
    <voc_dir>/JPEGImages/<id>.jpg
    <context_dir>/trainval/<id>.mat        variable LabelMap: the full label set
    <context_dir>/labels.txt               the full label set, lines "<number>: <name>"
    <context_dir>/59_labels.txt            the 59 task classes in output order, same form
Full labels that are not among the 59 become background (0); the 59 become 1-59.
Names are compared without spaces; three task names are spelt differently in the
full list (diningtable/table, bedcloth/bedclothes, clothes/cloth), as the reference
release resolved them.

Keys: voc_dir (the VOC2010 folder, e.g. "pascal/VOC2010"), context_dir, split,
mean (B, G, R) and optionally randomize, seed, prefetch (layers.base).
Tops: data, label.
"""
import numpy as np

from layers.base import (SegDataLayer, DataLayerError, Param, text, mean_bgr, resolve_dir,
                         require_dir, read_mat, load_bgr)

CLASS_NAMES = {
    'label': ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
              'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
              'sheep', 'sofa', 'train', 'tvmonitor', 'bag', 'bed', 'bench', 'book', 'building',
              'cabinet', 'ceiling', 'clothes', 'computer', 'cup', 'door', 'fence', 'floor',
              'flower', 'food', 'grass', 'ground', 'keyboard', 'light', 'mountain', 'mouse',
              'curtain', 'platform', 'sign', 'plate', 'road', 'rock', 'shelves', 'sidewalk', 'sky',
              'snow', 'bedcloth', 'track', 'tree', 'truck', 'wall', 'water', 'window', 'wood'),
}

# Task class names that the full label list spells differently.
FULL_LIST_SPELLING = {'diningtable': 'table', 'bedcloth': 'bedclothes', 'clothes': 'cloth'}


def read_label_names(path, make_target):
    """The (number, name) pairs of a "<number>: <name>" file, names without spaces."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataLayerError('{} does not exist: run {} to prepare the dataset'.format(
            path, make_target)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataLayerError('cannot read {}: {}'.format(path, error)) from None
    pairs = []
    for line_number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        number, colon, label = line.partition(':')
        if not colon or not number.strip().isdigit() or not label.strip():
            raise DataLayerError('{} line {}: expected "<number>: <name>", got {!r}'.format(
                path, line_number, line))
        pairs.append((int(number), label.replace(' ', '').strip()))
    return pairs


def full_to_task_lookup(full_path, task_path, make_target):
    """A table from full label number to task class (0 background, 1-59)."""
    full = read_label_names(full_path, make_target)
    task = [label for _, label in read_label_names(task_path, make_target)]
    if task != list(CLASS_NAMES['label'][1:]):
        raise DataLayerError('{} does not list the 59 classes of CLASS_NAMES in order '
                             '(got {} names starting {})'.format(task_path, len(task), task[:3]))
    number_of = {label: number for number, label in full}
    lookup = np.zeros(max(number for number, _ in full) + 1, dtype=np.uint8)
    for task_class, label in enumerate(task, 1):
        full_label = FULL_LIST_SPELLING.get(label, label)
        if full_label not in number_of:
            raise DataLayerError('{} has no label {!r} (task class {} of {})'.format(
                full_path, full_label, label, task_path))
        lookup[number_of[full_label]] = task_class
    return lookup


class PASCALContextSegDataLayer(SegDataLayer):
    """VOC2010 images with PASCAL-Context labels mapped to the 59-class task."""
    PARAMS = {'voc_dir': Param(text), 'context_dir': Param(text), 'mean': Param(mean_bgr)}
    MAKE_TARGET = '`make data-pascalcontext`'
    NUM_CLASSES = {'label': len(CLASS_NAMES['label'])}

    def configure(self, params):
        self.voc_dir = require_dir(resolve_dir(params['voc_dir']), self.MAKE_TARGET)
        self.context_dir = require_dir(resolve_dir(params['context_dir']), self.MAKE_TARGET)
        self.mean = params['mean']
        self.lookup = full_to_task_lookup(self.context_dir / 'labels.txt',
                                          self.context_dir / '59_labels.txt', self.MAKE_TARGET)
        return self.voc_dir / 'ImageSets' / 'Main' / (params['split'] + '.txt')

    def top_names(self):
        return ('data', 'label')

    def load(self, example_id):
        path = self.context_dir / 'trainval' / (example_id + '.mat')
        stored = read_mat(path, 'LabelMap')
        full = stored.astype(np.int64) if np.issubdtype(stored.dtype, np.number) else None
        if stored.ndim != 2 or full is None or (full != stored).any():
            raise DataLayerError('LabelMap in {} is not a 2-D map of whole numbers '
                                 '(shape {}, type {})'.format(path, stored.shape, stored.dtype))
        outside = (full < 0) | (full >= len(self.lookup))
        if outside.any():
            raise DataLayerError('PASCALContextSegDataLayer id {!r}: label value {} is not in {}'.format(
                example_id, full[outside][0], self.context_dir / 'labels.txt'))
        return (load_bgr(self.voc_dir / 'JPEGImages' / (example_id + '.jpg'), self.mean),
                self.lookup[full][np.newaxis, ...])
