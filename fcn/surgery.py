"""Net surgery: a classifier's weights carried into a fully convolutional net, and
upsampling layers filled with bilinear interpolation kernels (solve/surgery.py is the
command that makes the FCNs' base weights).

Layers of the same name are copied. A fully connected layer (InnerProduct) becomes the
convolution of the same name by a reshape: an inner product over a CxHxW input is an HxW
convolution with the same weights in the same order, so only the weight array's shape
changes, never its element count. `to_fcn` keeps only the layers that received weights,
so FCNs of any class count can start from its output. `load_weights` applies the same
rules when a training run starts from any weights file: score layers of another shape
(another class count) are filled afresh, and every decision is reported.
"""
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fcn import caffemodel, pictures
from fcn.prototxt import read_net
from fcn.errors import UsageError


class SurgeryError(ValueError):
    """Two nets' parameters cannot be matched."""


@dataclass
class TransplantReport:
    copied: list = field(default_factory=list)      # same name, same shapes
    coerced: list = field(default_factory=list)     # same name, same counts, new shapes
    reinitialised: list = field(default_factory=list)  # score layers for other classes
    dropped: list = field(default_factory=list)     # only in the source net
    initialised: list = field(default_factory=list)  # only in the target: left as filled

    def lines(self):
        """A line per kind of decision that was taken (copied always)."""
        for title, names in (('copied', self.copied), ('coerced', self.coerced),
                             ('re-initialised for the classes', self.reinitialised),
                             ('dropped', self.dropped),
                             ('left as initialised', self.initialised)):
            if names or title == 'copied':
                yield f'{title} ({len(names)}): {", ".join(names) if names else "-"}'


def is_score_layer(name):
    """The layers of an FCN's heads, whose shapes follow the class count: score_fr,
    score_pool4, upscore2, upscore8, ... as models/parts.py names them (suffixed per head)."""
    return name.startswith(('score', 'upscore'))


def _count(shape):
    return int(np.prod(shape, dtype=np.int64))


def take(report, name, source_shapes, target_shapes, fresh_scores=False):
    """How the target layer `name` takes a source layer whose blobs have `source_shapes`;
    recorded in `report`. Returns 'copy', 'coerce' or None (it keeps its initial values).

    Equal shapes are copied, and so are equal element counts in other shapes, reshaped (a
    fully connected layer becoming a convolution). A score layer of other shapes is
    re-initialised: the source scored other classes; with `fresh_scores` every score layer
    is (other classes of the same count). Any other difference is a SurgeryError.
    """
    score = is_score_layer(name)
    same = len(source_shapes) == len(target_shapes) and all(
        caffemodel.shapes_match(old, new) for old, new in zip(source_shapes, target_shapes))
    if score and (fresh_scores or not same):
        report.reinitialised.append(name)
        return None
    if same:
        report.copied.append(name)
        return 'copy'
    if len(source_shapes) != len(target_shapes):
        raise SurgeryError(f'layer {name}: the source layer has {len(source_shapes)} '
                           f'parameter blobs, the target {len(target_shapes)}')
    for index, (old, new) in enumerate(zip(source_shapes, target_shapes)):
        if _count(old) != _count(new):
            raise SurgeryError(
                f'layer {name} blob {index}: source shape {tuple(old)} ({_count(old)} values) '
                f'cannot become target shape {tuple(new)} ({_count(new)} values); rename the '
                f'layer in the new net to learn it from scratch')
    report.coerced.append(name)
    return 'coerce'


def transplant(new_net, old_net, suffix='', fresh_scores=False):
    """Copy `old_net`'s parameters into `new_net` layer by layer name (see `take`).

    With a suffix (multi-modal nets such as NYUD color-hha, whose layers are named
    conv1_1_color, ...), the target layer `<name><suffix>` takes the source layer `<name>`
    and target layers without the suffix are not touched.
    """
    report = TransplantReport()
    used = set()
    for name, blobs in new_net.params.items():
        if suffix and not name.endswith(suffix):
            continue
        source = name[:len(name) - len(suffix)] if suffix else name
        if source not in old_net.params:
            report.initialised.append(name)
            continue
        old_blobs = old_net.params[source]
        used.add(source)
        how = take(report, name, [old.data.shape for old in old_blobs],
                   [new.data.shape for new in blobs], fresh_scores)
        if how is not None:
            for old, new in zip(old_blobs, blobs):
                new.data[...] = old.data.reshape(new.data.shape)
    report.dropped = [name for name in old_net.params if name not in used]
    return report


def upsample_filter(size):
    """A size x size bilinear interpolation kernel (the outer product of two triangles).

    For an upsampling factor f the kernel is 2f wide (or 2f - 1); each tap weighs
    1 - distance / f from the kernel's centre.
    """
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1 - np.abs(np.arange(size) - centre) / factor
    return np.outer(taps, taps)


def interp(net, layers=None):
    """Fill upsampling (Deconvolution) layers with bilinear kernels; returns their names.

    Each output channel interpolates only its own input channel: weights are
    (inputs, outputs per group, k, k), so either inputs == outputs (a diagonal of
    kernels) or one output per group (a grouped, channel-wise deconvolution).
    """
    if layers is None:
        layers = [name for name, layer in zip(net._layer_names, net.layers)
                  if layer.type == 'Deconvolution']
    for name in layers:
        weights = net.params[name][0].data
        inputs, outputs, height, width = weights.shape
        if height != width:
            raise SurgeryError(f'layer {name}: bilinear kernels must be square, '
                               f'not {height}x{width}')
        if outputs != 1 and outputs != inputs:
            raise SurgeryError(f'layer {name}: {inputs} input and {outputs} output channels '
                               f'per group; interpolation needs equal counts or a '
                               f'channel-wise (grouped) deconvolution')
        kernel = upsample_filter(height)
        weights[...] = 0
        if outputs == 1:
            weights[:, 0] = kernel
        else:
            weights[range(inputs), range(outputs)] = kernel
    return layers


def expand_score(new_net, new_layer, old_net, old_layer):
    """Grow a score layer to more classes: the old classes' filters go first.

    The new layer keeps its initial values for the added classes.
    """
    old_blobs, new_blobs = old_net.params[old_layer], new_net.params[new_layer]
    for index, (old, new) in enumerate(zip(old_blobs, new_blobs)):
        classes = old.data.shape[0]
        if old.data.shape[1:] != new.data.shape[1:] or classes > new.data.shape[0]:
            raise SurgeryError(f'cannot expand {old_layer} blob {index} {old.data.shape} '
                               f'into {new_layer} {new.data.shape}')
        new.data[:classes] = old.data


def modality_suffix(net, modality):
    """The suffix a multi-modal net gives one modality's layers: "_hha" or "hha"."""
    for suffix in (f'_{modality}', modality):
        if any(name.endswith(suffix) for name in net.params):
            return suffix
    raise SurgeryError(f'no layer of the net is named for the modality {modality!r}')


def load_weights(net, path, suffix='', fresh_scores=False):
    """Initialise `net` from a caffemodel by layer name (Caffe's copy_from), checked first:
    the file as every tool checks it (caffemodel.checked_layers), then layer by layer.

    Each layer is taken as `take` decides: copied, coerced to the net's shapes, or (score
    layers for other classes) left to the net's fillers; any other mismatch is a
    SurgeryError naming the layer (Caffe itself would abort the process). With a suffix,
    file layer `<name>` initialises net layer `<name><suffix>`. Returns the
    TransplantReport (`dropped`: file layers the net does not have).
    """
    path = Path(path)
    layers = [layer for layer in caffemodel.checked_layers(path) if layer.shapes]
    report = TransplantReport()
    copied, coerced = [], []
    for layer in layers:
        target = layer.name + suffix
        if target not in net.params:
            report.dropped.append(layer.name)
            continue
        try:
            how = take(report, target, layer.shapes,
                       [param.data.shape for param in net.params[target]], fresh_scores)
        except SurgeryError as e:
            raise SurgeryError(f'{path}: {e}') from e
        if how == 'copy':
            copied.append(layer)
        elif how == 'coerce':
            coerced.append(layer)
    if not copied and not coerced:
        raise SurgeryError(f'no layer of {path} matches a layer of the net by name'
                           + (f' with the suffix {suffix!r}' if suffix else ''))
    taken = set(report.copied + report.coerced + report.reinitialised)
    report.initialised = [name for name in net.params if name not in taken]
    if copied and not suffix and len(copied) == len(layers) - len(report.dropped):
        net.copy_from(str(path))
    elif copied:
        fd, adjusted = tempfile.mkstemp(suffix='.caffemodel')
        os.close(fd)
        try:
            caffemodel.write_layers(path, adjusted, keep={layer.name for layer in copied},
                                    rename={layer.name: layer.name + suffix
                                            for layer in copied} if suffix else None)
            net.copy_from(adjusted)
        finally:
            os.unlink(adjusted)
    for layer in coerced:  # Caffe would refuse their shapes: reshaped here, one by one
        from caffe.io import blobproto_to_array
        for blob, param in zip(caffemodel.parse_layer(path, layer).blobs,
                               net.params[layer.name + suffix]):
            param.data[...] = blobproto_to_array(blob).reshape(param.data.shape)
    return report


def widen_input(net, layer, path, source_layer):
    """Initialise a first convolution that sees more input channels than the classifier's
    as the reference's NYUD colour-depth script does: its first input channels take the
    weights of `source_layer` from the caffemodel `path`, every further channel (depth)
    their mean over the source's input channels, and the bias is the source's bias.

    Without this the renamed layer (conv1_1_bgrd) keeps Caffe's default zero fill, its
    ReLU passes no gradient at zero, and the net never learns from its input.
    """
    from caffe.io import blobproto_to_array
    found = [record for record in caffemodel.checked_layers(path)
             if record.name == source_layer]
    if not found:
        raise SurgeryError(f'{path} has no layer {source_layer} to initialise {layer} from')
    weights, bias = (blobproto_to_array(blob)
                     for blob in caffemodel.parse_layer(path, found[0]).blobs)
    target = net.params[layer][0].data
    channels = weights.shape[1]
    if target.shape[0] != weights.shape[0] or target.shape[2:] != weights.shape[2:] \
            or target.shape[1] <= channels:
        raise SurgeryError(f'{layer} has shape {target.shape}: it cannot widen '
                           f'{source_layer} of shape {weights.shape} from {path}')
    target[:, :channels] = weights
    target[:, channels:] = weights.mean(axis=1, keepdims=True)
    net.params[layer][1].data[...] = bias.reshape(net.params[layer][1].data.shape)


def single_image_net(prototxt, spatial=None):
    """A prototxt's NetParameter with batch 1 (and HxW `spatial` if given) on its inputs.

    The deploy nets declare batches and image sizes that cost gigabytes of activations;
    surgery only needs the parameters.
    """
    net_param = read_net(prototxt)

    def shrink(shape):
        if len(shape.dim) == 4:
            shape.dim[0] = 1
            if spatial:
                shape.dim[2:] = [spatial, spatial]

    for layer in net_param.layer:
        if layer.type == 'Input':
            for shape in layer.input_param.shape:
                shrink(shape)
    for shape in net_param.input_shape:
        shrink(shape)
    if len(net_param.input_dim) == 4 * len(net_param.input):
        for i in range(len(net_param.input)):
            net_param.input_dim[4 * i] = 1
            if spatial:
                net_param.input_dim[4 * i + 2: 4 * i + 4] = [spatial, spatial]
    return net_param


def save_layers(net, path, keep):
    """Save only the layers named in `keep` as a caffemodel, atomically."""
    def save(tmp):
        whole = Path(tmp).with_name(Path(tmp).name + '.all')
        try:
            net.save(str(whole))
            caffemodel.write_layers(whole, tmp, keep=set(keep))
        finally:
            whole.unlink(missing_ok=True)

    pictures.atomic_save(path, save)


def to_fcn(classifier, weights, fcn, out, suffix='', spatial=64):
    """Make FCN base weights from a classifier; returns the TransplantReport. The
    classifier's weights are loaded as every tool loads weights (nets.load_net): they must
    be whole and hold every parameter layer of the classifier."""
    from fcn import nets
    for path, what in ((classifier, '--classifier'), (weights, '--weights'), (fcn, '--fcn')):
        if not Path(path).is_file():
            raise UsageError(f'{what} {path} does not exist')
    print(f'loading the classifier {classifier} with {weights}', flush=True)
    old_net = nets.load_net(classifier, weights, net_param=single_image_net(classifier))
    new_net = nets.load_net(fcn, net_param=single_image_net(fcn, spatial))
    try:
        report = transplant(new_net, old_net, suffix)
    except SurgeryError as e:
        raise UsageError(f'{classifier} cannot be carried into {fcn}: {e}') from e
    if not report.copied and not report.coerced:
        raise UsageError(f'no layer of {classifier} matches a layer of {fcn} by name')
    save_layers(new_net, out, set(report.copied + report.coerced))
    return report
