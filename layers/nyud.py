"""NYUDv2 data layer: the 40-class task of Gupta et al. (CVPR 2013), RGB-D input.

Layout (as the reference FCN release prepared it):
    <nyud_dir>/<split>.txt                 ids such as 5001
    <nyud_dir>/data/images/img_<id>.png    colour
    <nyud_dir>/data/depth/img_<id>.png     depth (16-bit, millimetres)
    <nyud_dir>/data/hha/img_<id>.png       HHA encoding of depth (Gupta et al. ECCV 2014)
    <nyud_dir>/segmentation/img_<id>.mat   variable segmentation: 0 void, 1-40 classes
Keys: nyud_dir, split, tops (any of "color", "depth", "hha", "label" in the order
of the layer's tops) and optionally randomize, seed, prefetch (see layers.base).

Tops:
    color  3 x H x W  BGR minus the NYUD colour mean
    depth  1 x H x W  log(depth) minus the mean log depth
    hha    3 x H x W  HHA minus the HHA mean (channel order as stored)
    label  1 x H x W  classes 0-39, void 255
"""
import numpy as np

from layers.base import (SegDataLayer, DataLayerError, Param, text, one_of_each, resolve_dir,
                         require_dir, read_image, read_mat, load_bgr, shift_labels)

CLASS_NAMES = {
    'label': ('wall', 'floor', 'cabinet', 'bed', 'chair', 'sofa', 'table', 'door', 'window',
              'bookshelf', 'picture', 'counter', 'blinds', 'desk', 'shelves', 'curtain',
              'dresser', 'pillow', 'mirror', 'floor mat', 'clothes', 'ceiling', 'books',
              'refridgerator', 'television', 'paper', 'towel', 'shower curtain', 'box',
              'whiteboard', 'person', 'night stand', 'toilet', 'sink', 'lamp', 'bathtub', 'bag',
              'otherstructure', 'otherfurniture', 'otherprop'),
}

# The reference release's float32 means.
MEAN_BGR = np.array((116.190, 97.203, 92.318), dtype=np.float32)
MEAN_HHA = np.array((132.431, 94.076, 118.477), dtype=np.float32)
MEAN_LOG_DEPTH = np.array((7.844,), dtype=np.float32)

TOPS = ('color', 'depth', 'hha', 'label')


class NYUDSegDataLayer(SegDataLayer):
    """NYUDv2 colour, depth, HHA and labels, in whichever tops the net asks for."""
    PARAMS = {'nyud_dir': Param(text), 'tops': Param(one_of_each(TOPS))}
    MAKE_TARGET = '`make data-nyud`'
    NUM_CLASSES = {'label': len(CLASS_NAMES['label'])}

    def configure(self, params):
        self.nyud_dir = require_dir(resolve_dir(params['nyud_dir']), self.MAKE_TARGET)
        self.tops = tuple(params['tops'])
        return self.nyud_dir / (params['split'] + '.txt')

    def top_names(self):
        return self.tops

    def load(self, example_id):
        loaders = {'color': self.load_color, 'depth': self.load_depth,
                   'hha': self.load_hha, 'label': self.load_label}
        return tuple(loaders[top](example_id) for top in self.tops)

    def path(self, folder, example_id, extension):
        return self.nyud_dir / folder / 'img_{}.{}'.format(example_id, extension)

    def load_color(self, example_id):
        return load_bgr(self.path('data/images', example_id, 'png'), MEAN_BGR)

    def load_depth(self, example_id):
        path = self.path('data/depth', example_id, 'png')
        depth = np.array(read_image(path), dtype=np.float32)
        if depth.ndim != 2:
            raise DataLayerError('depth image {} has more than one channel (shape {})'.format(
                path, depth.shape))
        # log(0) is -inf: it would turn the whole forward pass into NaN.
        if (depth <= 0).any():
            raise DataLayerError('NYUDSegDataLayer id {!r}: depth {} has values <= 0, '
                                 'whose log is undefined'.format(example_id, path))
        log_depth = np.log(depth)
        log_depth -= MEAN_LOG_DEPTH
        return log_depth[np.newaxis, ...]

    def load_hha(self, example_id):
        path = self.path('data/hha', example_id, 'png')
        hha = np.array(read_image(path), dtype=np.float32)
        if hha.ndim != 3 or hha.shape[2] != 3:
            raise DataLayerError('HHA image {} does not have three channels (shape {})'.format(
                path, hha.shape))
        hha -= MEAN_HHA
        return hha.transpose((2, 0, 1))

    def load_label(self, example_id):
        path = self.path('segmentation', example_id, 'mat')
        raw = read_mat(path, 'segmentation')
        if raw.ndim != 2:
            raise DataLayerError('segmentation in {} is not a 2-D map (shape {})'.format(
                path, raw.shape))
        example = 'NYUDSegDataLayer id {!r}'.format(example_id)
        return shift_labels(raw, (0,), self.NUM_CLASSES['label'], example)[np.newaxis, ...]
