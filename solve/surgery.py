#!/usr/bin/env python3
"""Net surgery: carry a classifier's weights into a fully convolutional net, and fill
upsampling layers with bilinear interpolation kernels.

The one command makes the base weights every VGG16 or AlexNet FCN starts from:

  surgery.py to-fcn --classifier models/vgg16/deploy.prototxt \\
      --weights VGG_ILSVRC_16_layers.caffemodel \\
      --fcn models/voc-fcn32s/deploy.prototxt --out vgg16-fcn.caffemodel

Layers of the same name are copied. A fully connected layer (InnerProduct) becomes the
convolution of the same name by reshaping: an inner product over a CxHxW input is a
HxW convolution with the same weights laid out the same way, so only the shape of the
weight array changes, never its element count. The output keeps only the layers that
received weights, so FCNs for any class count can start from it.
"""
import argparse
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import viz
from netfiles import UsageError


class SurgeryError(ValueError):
    """Two nets' parameters cannot be matched."""


@dataclass
class TransplantReport:
    copied: list = field(default_factory=list)      # same name, same shapes
    coerced: list = field(default_factory=list)     # same name, same counts, new shapes
    dropped: list = field(default_factory=list)     # only in the source net
    initialised: list = field(default_factory=list)  # only in the target: left as filled

    def lines(self):
        for title, names in (('copied', self.copied), ('coerced', self.coerced),
                             ('dropped', self.dropped), ('left as initialised',
                                                         self.initialised)):
            yield f'{title} ({len(names)}): {", ".join(names) if names else "-"}'


def transplant(new_net, old_net, suffix=''):
    """Copy `old_net`'s parameters into `new_net` layer by layer name.

    With a suffix (multi-modal nets such as NYUD color-hha, whose layers are named
    conv1_1_color, ...), the target layer `<name><suffix>` takes the source layer `<name>`
    and target layers without the suffix are not touched. A parameter whose shape differs
    but whose element count matches is reshaped (fully connected -> convolution); any
    other difference is a SurgeryError naming the layer and both shapes.
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
        if len(old_blobs) != len(blobs):
            raise SurgeryError(f'layer {name}: the source layer {source} has {len(old_blobs)} '
                               f'parameter blobs, the target {len(blobs)}')
        reshaped = False
        for index, (old, new) in enumerate(zip(old_blobs, blobs)):
            if old.data.shape == new.data.shape:
                continue
            if old.data.size != new.data.size:
                raise SurgeryError(
                    f'layer {name} blob {index}: source shape {old.data.shape} '
                    f'({old.data.size} values) cannot become target shape '
                    f'{new.data.shape} ({new.data.size} values)')
            reshaped = True
        for old, new in zip(old_blobs, blobs):
            new.data[...] = old.data.reshape(new.data.shape)
        (report.coerced if reshaped else report.copied).append(name)
        used.add(source)
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


def _blob_shape(blob):
    """A BlobProto's shape; old files give num, channels, height, width instead."""
    if blob.HasField('shape'):
        return tuple(blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)


def _shapes_match(file_shape, net_shape):
    """Caffe's rule: an old 4-D shape matches a net shape padded to 4-D with leading 1s."""
    if len(file_shape) == 4 and len(net_shape) < 4:
        net_shape = (1,) * (4 - len(net_shape)) + tuple(net_shape)
    return tuple(file_shape) == tuple(net_shape)


def modality_suffix(net, modality):
    """The suffix a multi-modal net gives one modality's layers: "_hha" or "hha"."""
    for suffix in (f'_{modality}', modality):
        if any(name.endswith(suffix) for name in net.params):
            return suffix
    raise SurgeryError(f'no layer of the net is named for the modality {modality!r}')


def load_weights(net, path, suffix=''):
    """Initialise `net` from a caffemodel by layer name (Caffe's copy_from), checked first.

    A shape mismatch is a SurgeryError naming the layer (Caffe itself would abort the
    process). With a suffix, file layer `<name>` initialises net layer `<name><suffix>`.
    Returns the TransplantReport (`dropped`: file layers the net does not have).
    """
    path = Path(path)
    source = read_caffemodel(path)
    layers = [layer for layer in list(source.layer) + list(source.layers) if layer.blobs]
    report = TransplantReport()
    for layer in layers:
        target = layer.name + suffix
        if target not in net.params:
            report.dropped.append(layer.name)
            continue
        blobs = net.params[target]
        if len(layer.blobs) != len(blobs):
            raise SurgeryError(f'{path} layer {layer.name} has {len(layer.blobs)} parameter '
                               f'blobs, the net layer {target} {len(blobs)}')
        for index, (blob, param) in enumerate(zip(layer.blobs, blobs)):
            if not _shapes_match(_blob_shape(blob), param.data.shape):
                raise SurgeryError(f'{path} layer {layer.name} blob {index} has shape '
                                   f'{_blob_shape(blob)}, the net layer {target} '
                                   f'{param.data.shape}; rename the layer to learn it from '
                                   f'scratch')
        report.copied.append(target)
        layer.name = target
    if not report.copied:
        raise SurgeryError(f'no layer of {path} matches a layer of the net by name'
                           + (f' with the suffix {suffix!r}' if suffix else ''))
    report.initialised = [name for name in net.params if name not in report.copied]
    if not suffix:
        net.copy_from(str(path))
        return report
    fd, renamed = tempfile.mkstemp(suffix='.caffemodel')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(source.SerializeToString())
        net.copy_from(renamed)
    finally:
        os.unlink(renamed)
    return report


def read_caffemodel(path):
    """A caffemodel's NetParameter, or a SurgeryError naming the file."""
    from caffe.proto import caffe_pb2
    path = Path(path)
    if not path.is_file():
        raise SurgeryError(f'weights file {path} does not exist')
    source = caffe_pb2.NetParameter()
    try:
        source.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf's DecodeError, without importing its module path
        raise SurgeryError(f'{path} is not a Caffe weights file ({e})') from e
    return source


def widen_input(net, layer, path, source_layer):
    """Initialise a first convolution that sees more input channels than the classifier's
    as the reference's NYUD colour-depth script does: its first input channels take the
    weights of `source_layer` from the caffemodel `path`, every further channel (depth)
    their mean over the source's input channels, and the bias is the source's bias.

    Without this the renamed layer (conv1_1_bgrd) keeps Caffe's default zero fill, its
    ReLU passes no gradient at zero, and the net never learns from its input.
    """
    from caffe.io import blobproto_to_array
    found = [entry for entry in read_caffemodel(path).layer if entry.name == source_layer]
    if not found:
        raise SurgeryError(f'{path} has no layer {source_layer} to initialise {layer} from')
    weights, bias = (blobproto_to_array(blob) for blob in found[0].blobs)
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
    import netfiles
    net_param = netfiles.read_net(prototxt)

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
    from caffe.proto import caffe_pb2

    def save(tmp):
        net.save(str(tmp))
        full = caffe_pb2.NetParameter()
        full.ParseFromString(Path(tmp).read_bytes())
        kept = [layer for layer in full.layer if layer.name in keep]
        del full.layer[:]
        full.layer.extend(kept)
        Path(tmp).write_bytes(full.SerializeToString())

    viz.atomic_save(path, save)


def to_fcn(classifier, weights, fcn, out, suffix='', spatial=64):
    """Make FCN base weights from a classifier; returns the TransplantReport."""
    import caffe
    import netfiles
    for path, what in ((classifier, '--classifier'), (weights, '--weights'), (fcn, '--fcn')):
        if not Path(path).is_file():
            raise UsageError(f'{what} {path} does not exist')
    with netfiles.temporary_prototxt(single_image_net(classifier)) as path:
        print(f'loading the classifier {classifier} with {weights}', flush=True)
        old_net = caffe.Net(path, str(weights), caffe.TEST)
    with netfiles.temporary_prototxt(single_image_net(fcn, spatial)) as path:
        new_net = caffe.Net(path, caffe.TEST)
    try:
        report = transplant(new_net, old_net, suffix)
    except SurgeryError as e:
        raise UsageError(f'{classifier} cannot be carried into {fcn}: {e}') from e
    if not report.copied and not report.coerced:
        raise UsageError(f'no layer of {classifier} matches a layer of {fcn} by name')
    save_layers(new_net, out, set(report.copied + report.coerced))
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    to = commands.add_parser('to-fcn', help='make FCN base weights from a classifier')
    to.add_argument('--classifier', required=True, type=Path,
                    help="the classifier's deploy prototxt")
    to.add_argument('--weights', required=True, type=Path,
                    help="the classifier's weights (.caffemodel)")
    to.add_argument('--fcn', required=True, type=Path, help="an FCN's deploy prototxt")
    to.add_argument('--out', required=True, type=Path, help='where to write the base weights')
    to.add_argument('--suffix', default='',
                    help='FCN layer names carry this suffix (multi-modal nets)')
    args = parser.parse_args(argv)
    report = to_fcn(args.classifier, args.weights, args.fcn, args.out, args.suffix)
    for line in report.lines():
        print(line)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    sys.exit(main())
