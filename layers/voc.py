"""PASCAL VOC and SBD data layers (21 classes: background and 20 objects).

VOCSegDataLayer reads the PASCAL VOC layout (also the toy set's):
    <voc_dir>/ImageSets/Segmentation/<split>.txt
    <voc_dir>/JPEGImages/<id>.jpg
    <voc_dir>/SegmentationClass/<id>.png   palette PNG: class indices, 255 void
SBDDSegDataLayer reads the SBD layout:
    <sbdd_dir>/<split>.txt
    <sbdd_dir>/img/<id>.jpg
    <sbdd_dir>/cls/<id>.mat                struct GTcls, field Segmentation
Both take keys voc_dir / sbdd_dir, split, mean (B, G, R) and optionally randomize,
seed, prefetch (see layers.base). Tops: data, label.

Example python_param for SBD training:
    module: "layers.voc"  layer: "SBDDSegDataLayer"
    param_str: '{"sbdd_dir": "sbdd/dataset", "split": "train",
                 "mean": [104.00699, 116.66877, 122.67892]}'
"""
from layers.base import (SegDataLayer, DataLayerError, Param, text, mean_bgr, resolve_dir,
                         require_dir, read_image, read_mat, load_bgr, label_map)

CLASS_NAMES = {
    'label': ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
              'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person',
              'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor'),
}
NUM_CLASSES = {top: len(names) for top, names in CLASS_NAMES.items()}


class VOCSegDataLayer(SegDataLayer):
    """PASCAL VOC segmentation (and the toy set, which shares the layout)."""
    PARAMS = {'voc_dir': Param(text), 'mean': Param(mean_bgr)}
    MAKE_TARGET = '`make data-voc` (the toy set: `make data-toy`)'
    NUM_CLASSES = NUM_CLASSES

    def configure(self, params):
        self.voc_dir = require_dir(resolve_dir(params['voc_dir']), self.MAKE_TARGET)
        self.mean = params['mean']
        return self.voc_dir / 'ImageSets' / 'Segmentation' / (params['split'] + '.txt')

    def top_names(self):
        return ('data', 'label')

    def load(self, example_id):
        label_path = self.voc_dir / 'SegmentationClass' / (example_id + '.png')
        label = read_image(label_path)
        if label.ndim != 2:
            raise DataLayerError('label image {} is not an indexed (palette) or grey PNG '
                                 '(array shape {})'.format(label_path, label.shape))
        return (load_bgr(self.voc_dir / 'JPEGImages' / (example_id + '.jpg'), self.mean),
                label_map(label, label_path))


class SBDDSegDataLayer(SegDataLayer):
    """The SBD extended annotations of PASCAL VOC images (FCN's training set)."""
    PARAMS = {'sbdd_dir': Param(text), 'mean': Param(mean_bgr)}
    MAKE_TARGET = '`make data-voc`'
    NUM_CLASSES = NUM_CLASSES

    def configure(self, params):
        self.sbdd_dir = require_dir(resolve_dir(params['sbdd_dir']), self.MAKE_TARGET)
        self.mean = params['mean']
        return self.sbdd_dir / (params['split'] + '.txt')

    def top_names(self):
        return ('data', 'label')

    def load(self, example_id):
        label_path = self.sbdd_dir / 'cls' / (example_id + '.mat')
        gt = read_mat(label_path, 'GTcls')
        if gt.dtype.names is None or 'Segmentation' not in gt.dtype.names or gt.size != 1:
            raise DataLayerError('GTcls in {} is not a struct with a Segmentation field'.format(
                label_path))
        return (load_bgr(self.sbdd_dir / 'img' / (example_id + '.jpg'), self.mean),
                label_map(gt['Segmentation'].item(), label_path))
