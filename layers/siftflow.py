"""SIFT Flow data layer: 33 semantic and 3 geometric classes of 256 x 256 scenes.

Layout (SiftFlowDataset.zip as unpacked by `make data-siftflow`):
    <siftflow_dir>/<split>.txt   ids such as coast_arnat59
    <siftflow_dir>/Images/spatial_envelope_256x256_static_8outdoorcategories/<id>.jpg
    <siftflow_dir>/SemanticLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat
    <siftflow_dir>/GeoLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat
The label files hold variable S: semantic 0 void and 1-33; geometric -1 (or 0)
void and 1-3. Both shift down by one so classes start at 0 and void is 255.
Keys: siftflow_dir, split and optionally randomize, seed, prefetch (layers.base).
Tops: data (BGR minus the SIFT Flow mean), sem, geo.
"""
import numpy as np

from layers.base import (SegDataLayer, DataLayerError, Param, text, resolve_dir, require_dir,
                         read_mat, load_bgr, shift_labels)

CLASS_NAMES = {
    'sem': ('awning', 'balcony', 'bird', 'boat', 'bridge', 'building', 'bus', 'car', 'cow',
            'crosswalk', 'desert', 'door', 'fence', 'field', 'grass', 'moon', 'mountain',
            'person', 'plant', 'pole', 'river', 'road', 'rock', 'sand', 'sea', 'sidewalk', 'sign',
            'sky', 'staircase', 'streetlight', 'sun', 'tree', 'window'),
    'geo': ('sky', 'horizontal', 'vertical'),
}

# Semantic classes that never occur in the test set: semantic mean IU must leave them out.
ABSENT_FROM_TEST = ('cow', 'desert', 'moon')

# The reference release's float32 mean (B, G, R).
MEAN_BGR = np.array((114.578, 115.294, 108.353), dtype=np.float32)

SCENES = 'spatial_envelope_256x256_static_8outdoorcategories'
IMAGES = 'Images/' + SCENES
LABELS = {'sem': 'SemanticLabels/' + SCENES, 'geo': 'GeoLabels/' + SCENES}
VOID_CODES = {'sem': (0,), 'geo': (-1, 0)}


class SIFTFlowSegDataLayer(SegDataLayer):
    """SIFT Flow images with their semantic and geometric labels."""
    PARAMS = {'siftflow_dir': Param(text)}
    MAKE_TARGET = '`make data-siftflow`'
    NUM_CLASSES = {top: len(names) for top, names in CLASS_NAMES.items()}

    def configure(self, params):
        self.siftflow_dir = require_dir(resolve_dir(params['siftflow_dir']), self.MAKE_TARGET)
        return self.siftflow_dir / (params['split'] + '.txt')

    def top_names(self):
        return ('data', 'sem', 'geo')

    def load(self, example_id):
        return (load_bgr(self.siftflow_dir / IMAGES / (example_id + '.jpg'), MEAN_BGR),
                self.load_label('sem', example_id), self.load_label('geo', example_id))

    def load_label(self, top, example_id):
        path = self.siftflow_dir / LABELS[top] / (example_id + '.mat')
        raw = read_mat(path, 'S')
        if raw.ndim != 2:
            raise DataLayerError('S in {} is not a 2-D map (shape {})'.format(path, raw.shape))
        example = 'SIFTFlowSegDataLayer id {!r} ({})'.format(example_id, top)
        return shift_labels(raw, VOID_CODES[top], self.NUM_CLASSES[top], example)[np.newaxis, ...]
