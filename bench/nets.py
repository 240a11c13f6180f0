"""The benchmarked nets as Caffe defines them: prototxt files, geometry, inputs and weights.

Everything here works on `caffe_pb2` messages (read and written by fcn/prototxt.py) and
numpy arrays only, so the PyTorch side can read the same definitions without loading
libcaffe into its process.
"""

from pathlib import Path

import numpy as np

from fcn.paths import REPO
from fcn.prototxt import caffe_pb2
DEFAULT_MODEL_DIR = REPO / 'models' / 'voc-fcn8s'
# Random input pixels span what a mean-subtracted 8-bit image spans.
INPUT_RANGE = 128.0
VOID_LABEL = 255
# PASCAL VOC's 20 classes and background: the classes of the fixture labels.
NUM_CLASSES = 21


def model_files(model_dir):
    """deploy, train and solver prototxt paths of a generated model folder."""
    model_dir = Path(model_dir)
    files = {name: model_dir / f'{name}.prototxt' for name in ('deploy', 'train', 'solver')}
    missing = [str(path) for path in files.values() if not path.exists()]
    if missing:
        raise SystemExit(f'bench: missing {", ".join(missing)}: generate the model folder '
                         f'first (models/ makes models/<name>/*.prototxt)')
    return files


def in_phase(layer, phase):
    """Caffe's include/exclude rules, by phase (the only rule the FCN nets use)."""
    if layer.include:
        return any(not rule.HasField('phase') or rule.phase == phase for rule in layer.include)
    return not any(rule.HasField('phase') and rule.phase == phase for rule in layer.exclude)


def input_fed(net, shapes):
    """A copy of `net` whose Python data layers become Input layers of the given top shapes.

    This is how the training net is benchmarked without a dataset: the data arrive by
    assignment to the input blobs, as a prefetching data layer would have them ready.
    """
    fed = caffe_pb2().NetParameter()
    fed.CopyFrom(net)
    for layer in fed.layer:
        if layer.type != 'Python':
            continue
        unknown = [top for top in layer.top if top not in shapes]
        if unknown:
            raise ValueError(f'data layer {layer.name!r} has tops {unknown} with no input shape')
        tops = list(layer.top)
        layer.Clear()
        layer.name, layer.type = f'{tops[0]}_input', 'Input'
        layer.top.extend(tops)
        for top in tops:
            layer.input_param.shape.add().dim.extend(shapes[top])
    return fed


def solver_for(solver, train_net_path):
    """A copy of `solver` training `train_net_path`, with no test nets and no snapshots."""
    alone = caffe_pb2().SolverParameter()
    alone.CopyFrom(solver)
    for field in ('net', 'train_net', 'test_net', 'test_iter', 'test_interval',
                  'test_initialization', 'snapshot', 'snapshot_prefix'):
        alone.ClearField(field)
    alone.train_net = str(train_net_path)
    alone.test_initialization = False
    return alone


def conv_geometry(conv):
    """(kernel, stride, pad, dilation) as (h, w) pairs, and group, of a ConvolutionParameter."""
    def axes(values, default, h=None, w=None):
        if h and (conv.HasField(h) or conv.HasField(w)):
            return getattr(conv, h), getattr(conv, w)
        values = list(values) or [default]
        return values[0], values[-1]
    return (axes(conv.kernel_size, None, 'kernel_h', 'kernel_w'),
            axes(conv.stride, 1, 'stride_h', 'stride_w'),
            axes(conv.pad, 0, 'pad_h', 'pad_w'),
            axes(conv.dilation, 1), conv.group)


def param_mults(layer, index):
    """(lr_mult, decay_mult) of the layer's index-th parameter blob; Caffe's default is 1, 1."""
    if index < len(layer.param):
        return layer.param[index].lr_mult, layer.param[index].decay_mult
    return 1.0, 1.0


def random_image(width, height, seed):
    """A batch of one image with the value range of a mean-subtracted 8-bit image."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-INPUT_RANGE, INPUT_RANGE, (1, 3, height, width)).astype(np.float32)


def random_label(width, height, num_classes, seed):
    """A label map of classes below `num_classes` with about 5% void pixels."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, num_classes, (1, 1, height, width)).astype(np.float32)
    label[rng.random(label.shape) < 0.05] = VOID_LABEL
    return label


def random_weights(shapes, seed):
    """Gaussian weights of variance 1/fan-in and small negative biases, keyed 'layer/index'.

    Variance 1/fan-in (not He's 2/fan-in) lets the signal decay gently through the ReLUs,
    so the scores stay far from the float range where Caffe's softmax loss clamps
    probabilities. Negative biases keep the constant field that conv1_1's 100-pixel padding
    makes at zero after every ReLU: a positive constant would fill max-pooling windows with
    ties that each framework breaks by its own rounding, sending gradients to other pixels.
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for key, shape in shapes.items():
        if len(shape) == 1:
            weights[key] = -rng.uniform(0.01, 0.2, shape).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            weights[key] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return weights
