"""Where a model's files are and what its data layers are told.

The model table (`models.specs.MODELS`) names every model; its prototxts live in
`models/<name>/`. The data layers are Python layers configured by JSON in
`python_param.param_str`, so changing the split, the data directory or a training
process's shard is an edit of that JSON in a copy of the prototxt, never of the file.
"""
import importlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

# Caffe's environment (quiet glog) is read when Caffe is first imported; every tool
# imports this module first, and this module sets it.
from fcn.runtime import caffe_env  # noqa: F401

from fcn import paths


class UsageError(SystemExit):
    """A problem the user can fix; the message names the file or value and what to do."""

    def __init__(self, message):
        super().__init__(f'error: {message}')


def caffe_pb2():
    from caffe.proto import caffe_pb2 as pb2
    return pb2


def model_spec(name):
    """The model table's entry for `name`, with the known names in the error."""
    try:
        from models.specs import MODELS
    except ImportError as e:
        raise UsageError(f'cannot read the model table models/specs.py ({e})') from e
    if name not in MODELS:
        raise UsageError(f'unknown model {name!r}; known models: {", ".join(sorted(MODELS))}')
    return MODELS[name]


def model_file(name, kind, models_dir=None):
    """`models/<name>/<kind>.prototxt`, which must exist."""
    path = Path(models_dir or paths.MODELS_DIR) / name / f'{kind}.prototxt'
    if not path.is_file():
        raise UsageError(f'{path} does not exist; generate the model files first '
                         f'(`make models`)')
    return path


def class_names(spec, head):
    """Names of a head's classes: the head's own (a dataset of one's own names them), else
    `layers.<dataset>.CLASS_NAMES`, else 'class N'."""
    names = tuple(head.class_names)
    if not names:
        try:
            names = tuple(importlib.import_module(f'layers.{spec.dataset}')
                          .CLASS_NAMES[head.label])
        except (ImportError, AttributeError, KeyError, TypeError):
            names = ()
    if len(names) != head.num_classes:
        names = tuple(f'class {i}' for i in range(head.num_classes))
    return names


def read_net(path):
    from google.protobuf import text_format
    net = caffe_pb2().NetParameter()
    text_format.Merge(Path(path).read_text(), net)
    return net


def read_solver(path):
    from google.protobuf import text_format
    solver = caffe_pb2().SolverParameter()
    text_format.Merge(Path(path).read_text(), solver)
    return solver


def write_text_proto(path, message):
    """Write a prototxt atomically."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    tmp.write_text(str(message))
    os.replace(tmp, path)


def data_layers(net_param):
    """The Python layers that take no bottoms: the nets' data layers."""
    return [layer for layer in net_param.layer
            if layer.type == 'Python' and not layer.bottom]


def update_data_params(net_param, **updates):
    """Set keys of every data layer's JSON parameters (in place); None values are skipped."""
    updates = {k: v for k, v in updates.items() if v is not None}
    for layer in data_layers(net_param):
        params = json.loads(layer.python_param.param_str or '{}')
        params.update(updates)
        layer.python_param.param_str = json.dumps(params)
    return net_param


@contextmanager
def temporary_prototxt(message, directory=None):
    """A prototxt file holding `message` while the block runs (Caffe reads paths only)."""
    fd, path = tempfile.mkstemp(suffix='.prototxt', dir=directory)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(str(message))
        yield path
    finally:
        os.unlink(path)


def set_data_dir(data_dir):
    """Relative data directories in the layers resolve against FCN_DATA_DIR (contract)."""
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise UsageError(f'--data-dir {data_dir}: no such directory')
        os.environ['FCN_DATA_DIR'] = str(Path(data_dir).resolve())


def data_layer_object(net):
    """The Python object of a net's first layer, its data layer."""
    if not len(net.layers) or net.layers[0].type != 'Python':
        raise UsageError('the net does not start with a Python data layer')
    return net.layers[0]


def split_ids(net):
    """The image ids the net's data layer walks through, in order.

    The project's data layers list them in `ids` (sequential and wrapping for
    evaluation splits), which is how evaluation knows how many forward passes make a split.
    """
    layer = data_layer_object(net)
    ids = getattr(layer, 'ids', None)
    if ids is None:
        raise UsageError(f'the data layer {type(layer).__name__} does not list its '
                         f'image ids (`ids`), so the split length is unknown')
    return [str(i) for i in ids]


RELEASED = 'released'


def weights_file(model, weights):
    """The weights a tool was given: a file, or RELEASED for the reference release's
    weights of `model` (models/weights.py), fetched and verified if not yet on disk."""
    if weights != RELEASED:
        return Path(weights)
    from data import weights as published
    if model not in published.RELEASED:
        raise UsageError(f'{model} has no released weights; the reference released: '
                         f'{", ".join(published.RELEASED)}')
    path = published.local_path(model)
    if not path.is_file():
        from data.fetch import FetchError
        from data.prepare import fetch_weights
        archives = [Path(p) for p in os.environ.get('FCN_ARCHIVES', '').split(os.pathsep) if p]
        try:
            fetch_weights(model, archives)
        except FetchError as e:
            raise UsageError(str(e)) from e
    return path


def unfilled_layers(net):
    """Layers whose parameters are all zero after loading weights: the reference nets'
    deploy and val definitions fill nothing but the at-once skip scales, so these got
    nothing from the weights file (it has no layer of that name)."""
    return [name for name, blobs in net.params.items()
            if not any(blob.data.any() for blob in blobs)]


def require_filled(net, model, weights):
    """Stop unless every parameter layer of `net` took values from `weights`."""
    missing = unfilled_layers(net)
    if missing:
        raise UsageError(f'{weights} has no weights for {len(missing)} layers of {model} '
                         f'({", ".join(missing[:5])}{", ..." if len(missing) > 5 else ""}): '
                         f'it is not a {model} model')


def load_net(prototxt, weights=None, phase='test', data_updates=None):
    """A caffe.Net from a prototxt, with data-layer parameter updates applied to a copy."""
    import caffe
    net_param = read_net(prototxt)
    if data_updates:
        update_data_params(net_param, **data_updates)
    if weights is not None and not Path(weights).is_file():
        raise UsageError(f'weights file {weights} does not exist')
    phase = caffe.TEST if phase == 'test' else caffe.TRAIN
    with temporary_prototxt(net_param) as path:
        if weights is None:
            return caffe.Net(path, phase)
        return caffe.Net(path, str(weights), phase)
