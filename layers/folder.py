"""A dataset of one's own: a folder in one of the layouts `data/check.py` describes.

FolderSegDataLayer reads either layout, images in any of the usual formats (8-bit RGB or
grey), labels as palette or grey PNGs of class ids (255 void), with the same reading code
as the dataset check, so that what the check passed is what training reads:

    voc:     <data_dir>/JPEGImages/<id>.*   <data_dir>/SegmentationClass/<id>.png
             <data_dir>/ImageSets/Segmentation/<split>.txt
    simple:  <data_dir>/images/<id>.*       <data_dir>/masks/<id>.png
             <data_dir>/<split>.txt

Keys: data_dir (relative: under the data root), layout ("voc" | "simple"), classes (the
class count K: labels must be 0..K-1 or 255), split, mean (B, G, R), and optionally
randomize, seed, prefetch (see layers.base). Tops: data, label.

Example python_param (written by solve/new_model.py):
    module: "layers.folder"  layer: "FolderSegDataLayer"
    param_str: '{"data_dir": "toy3", "layout": "simple", "classes": 3, "split": "train",
                 "mean": [121.4, 124.0, 126.2]}'
"""
from data.check import LAYOUTS, VOID, Dataset, DatasetError
from layers.base import (SegDataLayer, DataLayerError, Param, text, integer, mean_bgr,
                         resolve_dir, require_dir, bgr_input, label_map)


def layout_name(value):
    if value not in LAYOUTS:
        raise TypeError('one of {}'.format(', '.join(LAYOUTS)))
    return value


def class_count(value):
    if not 2 <= integer(value) <= VOID:
        raise TypeError('a class count from 2 to {}'.format(VOID))
    return value


class FolderSegDataLayer(SegDataLayer):
    """A dataset of one's own, in the VOC or the simple layout."""
    PARAMS = {'data_dir': Param(text), 'layout': Param(layout_name),
              'classes': Param(class_count), 'mean': Param(mean_bgr)}
    MAKE_TARGET = '`make data-check DATA=<the dataset folder>`'

    def configure(self, params):
        root = require_dir(resolve_dir(params['data_dir']), self.MAKE_TARGET)
        self.dataset = Dataset(root, params['layout'])
        self.mean = params['mean']
        # The class count is the dataset's, known only now; load_checked reads it here.
        self.NUM_CLASSES = {'label': params['classes']}
        return self.dataset.split_file(params['split'])

    def top_names(self):
        return ('data', 'label')

    def load(self, example_id):
        try:
            image, label = self.dataset.example(example_id, self.NUM_CLASSES['label'])
        except DatasetError as error:
            raise DataLayerError('{} id {!r}: {}'.format(
                type(self).__name__, example_id, error)) from None
        return bgr_input(image, self.mean), label_map(label, self.dataset.label_path(example_id))
