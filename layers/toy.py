"""The toy set's classification view: batches of (image, class) for pretraining the toy
VGG16 classifier, as VGG16 was pretrained on ILSVRC before surgery made it an FCN.

(The toy set's segmentation view has the PASCAL VOC layout and is read by
`layers.voc.VOCSegDataLayer`.) Layout under `toy_dir`, written by `data/toy.py`:
    classification/<split>.txt         ids, one per line
    classification/labels.txt          `<id> <class>` lines, classes as in segmentation
    classification/JPEGImages/<id>.jpg

Keys: toy_dir, split, mean (B, G, R), batch_size, and optionally randomize, seed,
prefetch (see layers.base). Tops: data (batch x 3 x H x W), label (batch). Order,
seeding and sharding are those of every data layer; a batch is that many examples in a row.

Example python_param:
    module: "layers.toy"  layer: "ToyClassDataLayer"
    param_str: '{"toy_dir": "toy", "split": "train", "batch_size": 16,
                 "mean": [127.5, 127.5, 127.5]}'
"""
import numpy as np

from data.toy import CLASS_NAMES as TOY_CLASS_NAMES
from layers.base import (SegDataLayer, DataLayerError, Param, text, integer, mean_bgr,
                         resolve_dir, require_dir, load_bgr)

CLASS_NAMES = {'label': TOY_CLASS_NAMES}
NUM_CLASSES = {top: len(names) for top, names in CLASS_NAMES.items()}


def positive(value):
    if integer(value) < 1:
        raise TypeError('a positive integer')
    return value


def read_labels(path):
    """{id: class} from `<id> <class>` lines."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataLayerError('label file {} does not exist: run `make data-toy` to '
                             'prepare the toy set'.format(path)) from None
    labels = {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise DataLayerError('{} line {}: expected "<id> <class>", got {!r}'.format(
                path, number, line))
        labels[fields[0]] = int(fields[1])
    return labels


class ToyClassDataLayer(SegDataLayer):
    """Toy classification: `batch_size` examples per iteration, all of one image size."""
    PARAMS = {'toy_dir': Param(text), 'mean': Param(mean_bgr), 'batch_size': Param(positive)}
    MAKE_TARGET = '`make data-toy`'
    NUM_CLASSES = NUM_CLASSES

    def configure(self, params):
        toy_dir = require_dir(resolve_dir(params['toy_dir']), self.MAKE_TARGET)
        self.folder = require_dir(toy_dir / 'classification', self.MAKE_TARGET)
        self.mean = params['mean']
        self.batch_size = params['batch_size']
        self.labels = read_labels(self.folder / 'labels.txt')
        return self.folder / (params['split'] + '.txt')

    def top_names(self):
        return ('data', 'label')

    def load(self, example_id):
        if example_id not in self.labels:
            raise DataLayerError('{} id {!r} has no class in {}'.format(
                type(self).__name__, example_id, self.folder / 'labels.txt'))
        return (load_bgr(self.folder / 'JPEGImages' / (example_id + '.jpg'), self.mean),
                np.array(self.labels[example_id], np.float32))

    def load_checked(self, example_id):
        image, label = self.load(example_id)
        if not 0 <= label < NUM_CLASSES['label']:
            raise DataLayerError('{} id {!r}: class {} is outside 0-{}'.format(
                type(self).__name__, example_id, int(label), NUM_CLASSES['label'] - 1))
        return image, label

    # A batch is the current example and the next batch_size - 1: its shape is the
    # current image's, which every image of the batch must share.
    def reshape(self, bottom, top):
        image, _ = self.current()
        top[0].reshape(self.batch_size, *image.shape)
        top[1].reshape(self.batch_size)

    def forward(self, bottom, top):
        expected = top[0].data.shape[1:]
        for index in range(self.batch_size):
            image, label = self.current()
            if image.shape != expected:
                raise DataLayerError('{} id {!r}: image is {}x{}, the batch is {}x{}'.format(
                    type(self).__name__, self.ids[self.position], image.shape[1],
                    image.shape[2], expected[1], expected[2]))
            top[0].data[index] = image
            top[1].data[index] = label
            self.advance()
