"""The reference release's nets as the released caffemodels hold them: the layers with
parameters, by name and blob shape, and caffemodels written with those names.

Shared by test_released.py and test_models_nets.py (imported by module name; it holds no
tests). Transcribed from the reference's definitions (shelhamer/fcn.berkeleyvision.org:
<model>/net.py and the train/val, trainval/test prototxts it wrote), which the released
weights were trained with; written here, not derived from the project's builders, so that
the two are compared.
"""
from pathlib import Path

import numpy as np

from caffe.proto import caffe_pb2

VGG16_CONVS = (('conv1_1', 64), ('conv1_2', 64), ('conv2_1', 128), ('conv2_2', 128),
               ('conv3_1', 256), ('conv3_2', 256), ('conv3_3', 256), ('conv4_1', 512),
               ('conv4_2', 512), ('conv4_3', 512), ('conv5_1', 512), ('conv5_2', 512),
               ('conv5_3', 512))


def conv(outputs, inputs, kernel):
    return 'Convolution', [(outputs, inputs, kernel, kernel), (outputs,)]


def upsampling(classes, kernel):
    return 'Deconvolution', [(classes, classes, kernel, kernel)]


def vgg16_body(width, suffix=''):
    """conv1_1 .. fc7 (fc6 a 7x7 convolution); returns the layers and the channels of
    pool3, pool4 and fc7."""
    scaled = lambda channels: max(1, round(channels * width))  # noqa: E731
    layers, inputs = {}, 3
    for name, outputs in VGG16_CONVS:
        layers[name + suffix] = conv(scaled(outputs), inputs, 3)
        inputs = scaled(outputs)
    fc = scaled(4096)
    layers['fc6' + suffix] = conv(fc, inputs, 7)
    layers['fc7' + suffix] = conv(fc, fc, 1)
    return layers, {'pool3': scaled(256), 'pool4': scaled(512), 'fc7': fc}


def fcn_head(classes, stride, channels, tag=''):
    """score_fr and the upsampling and skip layers of FCN-32s/16s/8s; `tag` ends every
    name (SIFT Flow's _sem and _geo heads)."""
    k = classes
    layers = {'score_fr' + tag: conv(k, channels['fc7'], 1)}
    if stride == 32:
        layers['upscore' + tag] = upsampling(k, 64)
    else:
        layers['upscore2' + tag] = upsampling(k, 4)
        layers['score_pool4' + tag] = conv(k, channels['pool4'], 1)
    if stride == 16:
        layers['upscore16' + tag] = upsampling(k, 32)
    if stride == 8:
        layers['upscore_pool4' + tag] = upsampling(k, 4)
        layers['score_pool3' + tag] = conv(k, channels['pool3'], 1)
        layers['upscore8' + tag] = upsampling(k, 16)
    return layers


def vgg16_fcn(width, heads, stride, atonce=False):
    layers, channels = vgg16_body(width)
    for classes, tag in heads:
        layers.update(fcn_head(classes, stride, channels, tag))
    if atonce:
        layers['scale_pool4'] = 'Scale', [(channels['pool4'],)]
        layers['scale_pool3'] = 'Scale', [(channels['pool3'],)]
    return layers


def late_fusion(width):
    """nyud-fcn32s-color-hha: a body per modality, names suffixed by it, the two coarse
    scores summed and upsampled by one layer."""
    layers = {}
    for modality in ('color', 'hha'):
        body, channels = vgg16_body(width, modality)
        layers.update(body)
        layers['score_fr' + modality] = conv(40, channels['fc7'], 1)
    layers['upscore'] = upsampling(40, 64)
    return layers


def fcn_alexnet(width):
    """CaffeNet's convolutions (conv2, conv4, conv5 in two groups), fc6 a 6x6
    convolution, upsampling 63x63."""
    s = lambda channels: max(1, round(channels * width))  # noqa: E731
    return {'conv1': conv(s(96), 3, 11), 'conv2': conv(s(256), s(96) // 2, 5),
            'conv3': conv(s(384), s(256), 3), 'conv4': conv(s(384), s(384) // 2, 3),
            'conv5': conv(s(256), s(384) // 2, 3), 'fc6': conv(s(4096), s(256), 6),
            'fc7': conv(s(4096), s(4096), 1), 'score_fr': conv(21, s(4096), 1),
            'upscore': upsampling(21, 63)}


SIFTFLOW_HEADS = ((33, '_sem'), (3, '_geo'))
REFERENCE = {
    'voc-fcn32s': lambda w: vgg16_fcn(w, [(21, '')], 32),
    'voc-fcn16s': lambda w: vgg16_fcn(w, [(21, '')], 16),
    'voc-fcn8s': lambda w: vgg16_fcn(w, [(21, '')], 8),
    'voc-fcn8s-atonce': lambda w: vgg16_fcn(w, [(21, '')], 8, atonce=True),
    'voc-fcn-alexnet': fcn_alexnet,
    'nyud-fcn32s-color': lambda w: vgg16_fcn(w, [(40, '')], 32),
    'nyud-fcn32s-hha': lambda w: vgg16_fcn(w, [(40, '')], 32),
    'nyud-fcn32s-color-hha': late_fusion,
    'siftflow-fcn32s': lambda w: vgg16_fcn(w, SIFTFLOW_HEADS, 32),
    'siftflow-fcn16s': lambda w: vgg16_fcn(w, SIFTFLOW_HEADS, 16),
    'siftflow-fcn8s': lambda w: vgg16_fcn(w, SIFTFLOW_HEADS, 8),
    'pascalcontext-fcn32s': lambda w: vgg16_fcn(w, [(60, '')], 32),
    'pascalcontext-fcn16s': lambda w: vgg16_fcn(w, [(60, '')], 16),
    'pascalcontext-fcn8s': lambda w: vgg16_fcn(w, [(60, '')], 8),
}


def reference_shapes(model, width=1.0):
    return {name: [tuple(shape) for shape in shapes]
            for name, (_, shapes) in REFERENCE[model](width).items()}


def param_shapes(net):
    return {name: [tuple(blob.data.shape) for blob in blobs] for name, blobs in net.params.items()}


BLOB_DATA_FIELD = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name['data'].number


def packed_floats(field, array):
    """The wire encoding of a packed repeated float field holding `array`: protobuf's own
    list filling takes seconds for the millions of values of a 60-class upsampling."""
    raw = np.ascontiguousarray(array, '<f4').tobytes()
    length, size = bytearray(), len(raw)
    while True:
        length.append(size & 0x7f | (0x80 if size > 0x7f else 0))
        size >>= 7
        if not size:
            break
    return bytes([field << 3 | 2]) + bytes(length) + raw


def write_released(path, model, width=1 / 16, seed=0, leave_out=()):
    """A caffemodel as the reference released it: its layer names and blob shapes (at
    `width`), random values scaled by fan-in. Returns name -> arrays written."""
    rng = np.random.default_rng(seed)
    net, values = caffe_pb2.NetParameter(name=model), {}
    for name, (kind, shapes) in REFERENCE[model](width).items():
        if name in leave_out:
            continue
        layer = net.layer.add()
        layer.name, layer.type = name, kind
        values[name] = []
        for shape in shapes:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            array = rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)
            blob = layer.blobs.add()
            blob.shape.dim.extend(shape)
            blob.MergeFromString(packed_floats(BLOB_DATA_FIELD, array))
            values[name].append(array)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(net.SerializeToString())
    return values
