"""Where a model's files are and what its data layers are told.

The model table (`models.registry.load().models`) names every model; its prototxts live in
`models/<name>/`. The data layers are Python layers configured by JSON in
`python_param.param_str`, so changing the split, the data directory or a training
process's shard is an edit of that JSON in a copy of the prototxt, never of the file.
"""
import importlib
import json
import os
import sys
from pathlib import Path

# Caffe's environment (quiet glog) is read when Caffe is first imported; every tool
# imports this module first, and this module sets it.
from fcn.runtime import caffe_env  # noqa: F401

from fcn import caffemodel, constants, paths
from fcn.errors import UsageError
from fcn.prototxt import data_layers, read_net, temporary_prototxt


def model_spec(name):
    """The model table's entry for `name` (models/registry.py); the error lists the known
    models, or names the declaration of `name` that cannot be used and why."""
    from models import registry
    try:
        return registry.load().spec(name)
    except registry.UnknownModel as error:
        raise UsageError(str(error)) from None


def model_file(name, variant, models_dir=None):
    """`models/<name>/<variant>.prototxt` (variant: train, val, deploy or solver), which must
    exist."""
    path = Path(models_dir or paths.MODELS_DIR) / name / f'{variant}.prototxt'
    if not path.is_file():
        raise UsageError(f'{path} does not exist; generate the model files first '
                         f'(`make models`)')
    return path


def class_names(spec, head):
    """Names of a head's classes: the head's own (a dataset of one's own names them), else
    `layers.<dataset>.CLASS_NAMES`, else 'class N'."""
    names = tuple(head.class_names)
    if not names:
        module = f'layers.{spec.dataset}'
        try:
            table = constants.module_constant(module, 'CLASS_NAMES') \
                or importlib.import_module(module).CLASS_NAMES
            names = tuple(table[head.label])
        except (ImportError, AttributeError, KeyError, TypeError):
            names = ()
    if len(names) != head.num_classes:
        names = tuple(f'class {i}' for i in range(head.num_classes))
    return names


def update_data_params(net_param, **updates):
    """Set keys of every data layer's JSON parameters (in place); None values are skipped."""
    updates = {k: v for k, v in updates.items() if v is not None}
    for layer in data_layers(net_param):
        params = json.loads(layer.python_param.param_str or '{}')
        params.update(updates)
        layer.python_param.param_str = json.dumps(params)
    return net_param


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


# Layer types whose parameters a prototxt can give values by itself: the field of their
# parameters and each blob's filler, in blob order.
FILLERS = {'Convolution': ('convolution_param', ('weight_filler', 'bias_filler')),
           'Deconvolution': ('convolution_param', ('weight_filler', 'bias_filler')),
           'InnerProduct': ('inner_product_param', ('weight_filler', 'bias_filler')),
           'Scale': ('scale_param', ('filler', 'bias_filler')),
           'Bias': ('bias_param', ('filler',))}


def filled_by_definition(layer, blob_count):
    """Whether a layer's definition alone gives its `blob_count` parameter blobs their
    values: none is learned (lr_mult 0) and each has a filler, as the at-once nets' skip
    scales (constant 0.01 and 0.0001). A weights file need not hold such a layer."""
    if layer.type not in FILLERS or len(layer.param) < blob_count:
        return False
    field, fillers = FILLERS[layer.type]
    return (blob_count <= len(fillers)
            and all(spec.lr_mult == 0 for spec in layer.param[:blob_count])
            and all(getattr(layer, field).HasField(name) for name in fillers[:blob_count]))


def listed(names, limit=8):
    return ', '.join(names[:limit]) + (', ...' if len(names) > limit else '')


def layers_without_weights(net, net_param, records, weights, prototxt):
    """The parameter layers of `net` (made from `net_param`) that the weights file's layer
    records (caffemodel.LayerRecord) hold nothing for, but those the definition fills. A
    layer the file holds under a name of the net must have the net's blob shapes (Caffe
    would end the process): else a WeightsFileError naming it."""
    held = {}
    for record in records:
        held.setdefault(record.name, []).append(record.shapes)
    definitions = {layer.name: layer for layer in net_param.layer}
    missing = []
    for name, layer in zip(net._layer_names, net.layers):
        shapes = [tuple(blob.data.shape) for blob in layer.blobs]
        if name not in held:
            if shapes and not (name in definitions
                               and filled_by_definition(definitions[name], len(shapes))):
                missing.append(name)
            continue
        for file_shapes in held[name]:
            if len(file_shapes) != len(shapes) or not all(
                    map(caffemodel.shapes_match, file_shapes, shapes)):
                raise caffemodel.WeightsFileError(
                    f'{weights}: layer {name} holds blobs of shapes '
                    f'{", ".join(map(str, file_shapes)) or "none"} where {prototxt} has '
                    f'{", ".join(map(str, shapes)) or "none"}: the file holds another '
                    f"net's weights; give weights trained for this net")
    return missing


def load_net(prototxt, weights=None, phase='test', data_updates=None,
             allow_missing_layers=False, net_param=None):
    """A caffe.Net of a prototxt, its data layers' parameters updated in a copy
    (`data_updates`); `net_param`, the prototxt's definition as the caller read and edited
    it, stands in for the file.

    With `weights`, the way every tool loads a weights file: before Caffe reads it, the file
    must be whole (caffemodel.checked_layers), the layers it holds under the net's names
    must have the net's blob shapes, and it must hold every parameter layer of the net but
    those the definition fills (`filled_by_definition`). Missing layers are refused unless
    `allow_missing_layers`: then they keep the values the prototxt gives them, as a note on
    standard error says."""
    import caffe
    if net_param is None:
        net_param = read_net(prototxt)
    if data_updates:
        update_data_params(net_param, **data_updates)
    records = None if weights is None else caffemodel.checked_layers(weights)
    with temporary_prototxt(net_param) as path:
        net = caffe.Net(path, caffe.TEST if phase == 'test' else caffe.TRAIN)
    if weights is None:
        return net
    missing = layers_without_weights(net, net_param, records, weights, prototxt)
    if missing:
        what = (f'{weights} has no weights for {len(missing)} layers of {prototxt} '
                f'({listed(missing)})')
        if not allow_missing_layers:
            raise caffemodel.WeightsFileError(
                f"{what}: it holds another net's weights; give weights trained for this "
                f'net, or let those layers keep what the prototxt fills them with '
                f'(score.py and infer.py: --allow-missing-layers)')
        print(f'note: {what}: they keep what the prototxt fills them with', file=sys.stderr,
              flush=True)
    net.copy_from(str(weights))
    return net
