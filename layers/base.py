"""What every FCN data layer shares.

A data layer feeds one whole image per iteration and reshapes the net to it.
Subclasses (one per dataset) declare their parameters and how to load one
example; this module does the rest:

- parameters: JSON in ``python_param.param_str`` (never evaluated as code),
  checked against the declared keys: an unknown key, a missing key or a value of
  the wrong type is an error naming the key;
- the split: ``<split>.txt`` of ids, read once at set-up;
- order: training splits (the name contains "train", as in the reference) are
  drawn at random, with replacement, from ``random.Random(seed)`` (seed 1337
  unless given); evaluation splits run through the list in order and wrap;
- sharding: with several solvers (multi-GPU training) solver ``r`` of ``n``
  trains on ids ``r, r + n, r + 2n, ...`` of the list, so each sees its own
  images; evaluation splits are never sharded, so every score covers the whole
  split;
- prefetch (optional key "prefetch"): the next example is loaded on a
  background thread while the net runs on the current one. BVLC pycaffe keeps
  the GIL during Net.forward and Solver.step, so the overlap is small (loading a
  500 x 375 VOC example takes about 20 ms, next to seconds of VGG16 forward on a
  CPU); it is off by default;
- bad input: missing folders and split files name the path and the ``make``
  target that prepares them; unreadable files name the file; size mismatches and
  labels outside the classes name the id.

Directory parameters that are relative paths are resolved against the data
root: ``$FCN_DATA_DIR`` if set (relative: to the repository), else ``<repo>/data``.
"""
import json
import math
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

import caffe
from fcn.paths import data_root

# Labels the loss ignores (SoftmaxWithLoss ignore_label).
VOID = 255

DEFAULT_SEED = 1337


class DataLayerError(ValueError):
    """Bad layer parameters or bad data; the message says which and what to do."""


def resolve_dir(value):
    """A directory parameter as a path: absolute as given, relative under the data root."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else data_root() / path


# ---- parameters ------------------------------------------------------------------

REQUIRED = object()


class Param:
    """One parameter key: a checker that converts the JSON value or raises
    TypeError describing what was expected, and a default (REQUIRED if none)."""

    def __init__(self, check, default=REQUIRED):
        self.check = check
        self.default = default


def text(value):
    if not isinstance(value, str) or not value:
        raise TypeError('a non-empty string')
    return value


def name(value):
    """A bare file name stem such as a split: no directory parts."""
    value = text(value)
    if '/' in value or '\\' in value or value in ('.', '..'):
        raise TypeError('a plain name without "/" (a file in the dataset folder)')
    return value


def flag(value):
    if not isinstance(value, bool):
        raise TypeError('true or false')
    return value


def integer(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError('an integer')
    return value


def mean_bgr(value):
    """Three finite numbers, B G R; kept float64 as the reference layers did, so the
    subtraction rounds exactly as theirs."""
    if (not isinstance(value, list) or len(value) != 3
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                   for v in value)):
        raise TypeError('a list of three numbers (B, G, R)')
    return np.array(value, dtype=np.float64)


def one_of_each(choices):
    """A checker for a non-empty list of distinct names drawn from choices."""
    def check(value):
        if (not isinstance(value, list) or not value or len(set(map(str, value))) != len(value)
                or any(v not in choices for v in value)):
            raise TypeError('a non-empty list of distinct names from {}'.format(', '.join(choices)))
        return list(value)
    return check


# Keys every data layer takes besides its dataset's own.
COMMON_PARAMS = {
    'split': Param(name),
    'randomize': Param(flag, True),
    'seed': Param(integer, DEFAULT_SEED),
    'prefetch': Param(flag, False),
}


def parse_params(param_str, spec, layer):
    """The JSON object in param_str checked against spec (key -> Param), with defaults
    filled in. Errors name the layer and the key."""
    try:
        given = json.loads(param_str or '')
    except json.JSONDecodeError as error:
        raise DataLayerError('{}: param_str is not valid JSON ({}): {!r}'.format(
            layer, error, param_str)) from None
    if not isinstance(given, dict):
        raise DataLayerError('{}: param_str must be a JSON object, got {!r}'.format(layer, param_str))
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise DataLayerError('{}: unknown key {!r} in param_str (known keys: {})'.format(
            layer, unknown[0], ', '.join(sorted(spec))))
    params = {}
    for key, param in spec.items():
        if key not in given:
            if param.default is REQUIRED:
                raise DataLayerError('{}: missing key {!r} in param_str'.format(layer, key))
            params[key] = param.default
            continue
        try:
            params[key] = param.check(given[key])
        except TypeError as expected:
            raise DataLayerError('{}: key {!r} must be {}, got {!r}'.format(
                layer, key, expected, given[key])) from None
    return params


# ---- reading files -------------------------------------------------------------------

def read_ids(path, make_target):
    """The ids listed one per line in a split file (blank lines skipped)."""
    try:
        lines = Path(path).read_text().split()
    except FileNotFoundError:
        raise DataLayerError('split file {} does not exist: run {} to prepare the dataset'.format(
            path, make_target)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataLayerError('cannot read split file {}: {}'.format(path, error)) from None
    if not lines:
        raise DataLayerError('split file {} lists no ids'.format(path))
    return lines


def require_dir(path, make_target):
    if not Path(path).is_dir():
        raise DataLayerError('dataset folder {} does not exist: run {} to prepare it '
                             '(or set FCN_DATA_DIR to the folder holding your datasets)'.format(
                                 path, make_target))
    return Path(path)


def read_image(path):
    """The pixels of an image file as an array (PNG palettes give their indices)."""
    try:
        with Image.open(path) as image:
            return np.array(image)
    except (OSError, ValueError) as error:
        raise DataLayerError('cannot read image {}: {}'.format(path, error)) from None


def read_mat(path, key):
    """One variable of a MATLAB file."""
    try:
        mat = scipy.io.loadmat(str(path))
    except (OSError, ValueError, TypeError, NotImplementedError) as error:
        raise DataLayerError('cannot read MATLAB file {}: {}'.format(path, error)) from None
    if key not in mat:
        raise DataLayerError('MATLAB file {} has no variable {!r} (has: {})'.format(
            path, key, ', '.join(k for k in mat if not k.startswith('__'))))
    return mat[key]


# ---- preprocessing -------------------------------------------------------------------

def load_bgr(path, mean):
    """An RGB image file as Caffe input (see bgr_input)."""
    rgb = read_image(path)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataLayerError('image {} is not RGB (array shape {})'.format(path, rgb.shape))
    return bgr_input(rgb, mean)


def bgr_input(rgb, mean):
    """An RGB array as Caffe input: float32, channels swapped to BGR, mean subtracted,
    height x width x channel transposed to channel x height x width."""
    bgr = np.array(rgb, dtype=np.float32)[:, :, ::-1]
    bgr -= mean
    return bgr.transpose((2, 0, 1))


def label_map(array, path):
    """A 2-D integer label array as the loss wants it: uint8, 1 x height x width."""
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise DataLayerError('labels in {} are not a 2-D integer map (shape {}, type {})'.format(
            path, array.shape, array.dtype))
    return array.astype(np.uint8)[np.newaxis, ...]


def shift_labels(raw, void_values, num_classes, example):
    """Raw labels whose classes start at 1 moved to start at 0, with the raw void
    codes mapped to VOID; raw values that are neither are an error naming the example."""
    raw = np.asarray(raw)
    void = np.isin(raw, void_values)
    shifted = raw.astype(np.int64) - 1
    bad = ~void & ((shifted < 0) | (shifted >= num_classes))
    if bad.any():
        raise DataLayerError('{}: label value {} is outside the classes 1-{} (void: {})'.format(
            example, raw[bad][0], num_classes, ', '.join(map(str, void_values))))
    shifted[void] = VOID
    return shifted.astype(np.uint8)


def check_label_values(label, num_classes, example):
    """Labels must be a class (0 .. num_classes - 1) or VOID."""
    bad = (label >= num_classes) & (label != VOID)
    if bad.any():
        raise DataLayerError('{}: label value {} is outside the classes 0-{} (void {})'.format(
            example, label[bad][0], num_classes - 1, VOID))


def check_same_size(arrays, names, example):
    """Every top of one example covers the same height x width."""
    sizes = {top: array.shape[-2:] for top, array in zip(names, arrays)}
    if len(set(sizes.values())) > 1:
        raise DataLayerError('{}: image and label sizes differ ({})'.format(
            example, ', '.join('{} {}x{}'.format(top, *size) for top, size in sizes.items())))


# ---- the layer -------------------------------------------------------------------------

class SegDataLayer(caffe.Layer):
    """Base of the dataset layers: one example per iteration, tops reshaped to it.

    A subclass sets PARAMS (its own keys, besides COMMON_PARAMS), MAKE_TARGET (the
    command that prepares its dataset, quoted for messages) and NUM_CLASSES (label
    top -> class count), and defines:
      configure(params)  -> the split file's path; may set attributes (dirs, means);
      top_names()        -> the names of its tops, in order;
      load(example_id)   -> one array per top, each channels x height x width.
    """
    PARAMS = {}
    MAKE_TARGET = '`make data-...`'
    NUM_CLASSES = {}

    def setup(self, bottom, top):
        layer = type(self).__name__
        params = parse_params(self.param_str, {**self.PARAMS, **COMMON_PARAMS}, layer)
        split_file = self.configure(params)
        names = self.top_names()
        if len(bottom) != 0:
            raise DataLayerError('{} takes no bottoms, got {}'.format(layer, len(bottom)))
        if len(top) != len(names):
            raise DataLayerError('{} needs {} tops ({}), got {}'.format(
                layer, len(names), ', '.join(names), len(top)))
        ids = read_ids(split_file, self.MAKE_TARGET)
        training = 'train' in params['split']
        if training:
            ids = shard(ids, caffe.solver_rank(), caffe.solver_count(), split_file)
        self.ids = ids
        self.random = random.Random(params['seed']) if training and params['randomize'] else None
        self.position = self.random.randrange(len(ids)) if self.random else 0
        self.prefetcher = ThreadPoolExecutor(1, 'fcn-prefetch') if params['prefetch'] else None
        self.loaded = None   # (position, arrays) of the example in the tops
        self.pending = None  # (position, future) of the example being prefetched

    # Caffe's top vector supports indexing, not iteration.
    def reshape(self, bottom, top):
        for index, array in enumerate(self.current()):
            top[index].reshape(1, *array.shape)

    def forward(self, bottom, top):
        for index, array in enumerate(self.current()):
            top[index].data[...] = array
        self.advance()

    def backward(self, top, propagate_down, bottom):
        pass

    def current(self):
        """The arrays of the example at self.position, loaded once (Caffe reshapes
        at set-up and again before each forward)."""
        if self.loaded is None or self.loaded[0] != self.position:
            if self.pending is not None and self.pending[0] == self.position:
                arrays = self.pending[1].result()
            else:
                arrays = self.load_checked(self.ids[self.position])
            self.pending = None
            self.loaded = (self.position, arrays)
        return self.loaded[1]

    def advance(self):
        if self.random is not None:
            self.position = self.random.randrange(len(self.ids))
        else:
            self.position = (self.position + 1) % len(self.ids)
        if self.prefetcher is not None and self.loaded[0] != self.position:
            self.pending = (self.position,
                            self.prefetcher.submit(self.load_checked, self.ids[self.position]))

    def load_checked(self, example_id):
        """load() plus the checks every dataset needs: sizes agree, labels in range."""
        arrays = self.load(example_id)
        names = self.top_names()
        example = '{} id {!r}'.format(type(self).__name__, example_id)
        check_same_size(arrays, names, example)
        for top_name, array in zip(names, arrays):
            if top_name in self.NUM_CLASSES:
                check_label_values(array, self.NUM_CLASSES[top_name], example)
        return arrays


def shard(ids, rank, count, split_file):
    """The ids solver `rank` of `count` trains on."""
    mine = ids[rank::count]
    if not mine:
        raise DataLayerError('split file {} lists {} ids: too few for {} solvers'.format(
            split_file, len(ids), count))
    return mine
