"""The generated nets in Caffe: they instantiate, keep the input's size, count their
parameters as published, and transplant from their classifiers by name.

Train and val nets are loaded with their Python data layer swapped for an Input layer of
the same tops (edited in the NetParameter, so no second copy of any net is kept).
"""
import json
import math

import numpy as np
import pytest
from google.protobuf import text_format

import caffe
from caffe.proto import caffe_pb2
from models import parts
from models.generate import MODELS_DIR
from models.specs import BASE_NETS, MODELS
from released_nets import REFERENCE, param_shapes, reference_shapes

caffe.set_mode_cpu()

SEGMENTATION = sorted(name for name, spec in MODELS.items() if spec.task == 'segmentation')
CLASSIFIERS = sorted(name for name, spec in {**MODELS, **BASE_NETS}.items()
                     if spec.task == 'classification')
# Odd, even, tiny, thin, and PASCAL-sized inputs.
SIZES = ((1, 1), (1, 2), (2, 1), (7, 7), (31, 33), (32, 32), (64, 17), (127, 200),
         (255, 256), (375, 500), (500, 375), (500, 500))

# Parameters with a nonzero learning rate (weights and biases of every convolution and
# InnerProduct), and those held fixed (bilinear deconvolutions, at-once skip scales).
# The toy nets' counts follow their table entry (see vgg16_fcn_parameters).
PARAMETERS = {  # name: (learned, fixed)
    'voc-fcn32s': (134_346_581, 1_806_336),
    'voc-fcn16s': (134_357_354, 458_640),
    'voc-fcn8s': (134_362_751, 127_008),
    'voc-fcn8s-atonce': (134_362_751, 127_776),
    'voc-fcn-alexnet': (56_954_261, 1_750_329),
    'nyud-fcn32s-color': (134_424_424, 6_553_600),
    'nyud-fcn32s-hha': (134_424_424, 6_553_600),
    'nyud-fcn32s-color-d': (134_425_000, 6_553_600),
    'nyud-fcn32s-color-hha': (268_848_848, 6_553_600),
    'siftflow-fcn32s': (134_408_036, 4_497_408),
    'siftflow-fcn16s': (134_426_504, 1_141_920),
    'siftflow-fcn8s': (134_435_756, 316_224),
    'pascalcontext-fcn32s': (134_506_364, 14_745_600),
    'pascalcontext-fcn16s': (134_537_144, 3_744_000),
    'pascalcontext-fcn8s': (134_552_564, 1_036_800),
    'vgg16': (138_357_544, 0),
    'caffenet': (60_965_224, 0),
}


def spec_of(name):
    return {**MODELS, **BASE_NETS}[name]


def read_net(name, variant):
    net = caffe_pb2.NetParameter()
    text_format.Merge((MODELS_DIR / name / f'{variant}.prototxt').read_text(), net)
    return net


def with_input_layer(net_param, spec, size):
    """The net with its data layer replaced by an Input layer of the same tops."""
    data, = [layer for layer in net_param.layer if layer.type == 'Python']
    shapes = parts.input_shapes(spec, size, labels=True)
    assert list(data.top) == list(shapes), 'the data layer emits the tops of input_shapes'
    data.ClearField('python_param')
    data.type = 'Input'
    for top in data.top:
        data.input_param.shape.add().dim.extend(shapes[top])
    return net_param


def instantiate(net_param, tmp_path, phase=caffe.TEST):
    path = tmp_path / 'net.prototxt'
    path.write_text(str(net_param))
    return caffe.Net(str(path), phase)


def reshape(net, spec, size):
    for top, shape in parts.input_shapes(spec, size).items():
        net.blobs[top].reshape(*shape)
    net.reshape()


def parameter_counts(net, net_param):
    """(learned, fixed): parameter counts split by the layers' lr_mult (default 1)."""
    layers = {layer.name: layer for layer in net_param.layer}
    learned = fixed = 0
    for layer_name, blobs in net.params.items():
        specs = layers[layer_name].param
        for index, blob in enumerate(blobs):
            lr_mult = specs[index].lr_mult if index < len(specs) else 1
            if lr_mult:
                learned += blob.count
            else:
                fixed += blob.count
    return learned, fixed


@pytest.mark.parametrize('variant', ['train', 'val'])
@pytest.mark.parametrize('name', sorted(MODELS))
def test_train_and_val_nets_instantiate(name, variant, tmp_path):
    spec = MODELS[name]
    phase = caffe.TRAIN if variant == 'train' else caffe.TEST
    net = instantiate(with_input_layer(read_net(name, variant), spec, (40, 30)), tmp_path, phase)
    losses = {'loss'} | {'loss' + parts.head_suffix(h) for h in spec.heads[1:]}
    assert losses <= set(net.outputs)
    assert any(layer.type == 'Dropout' for layer in net.layers)


@pytest.mark.parametrize('name', sorted(MODELS))
def test_data_layers_follow_the_contract(name):
    spec = MODELS[name]
    keys = {'voc': {'voc_dir'}, 'sbdd': {'sbdd_dir'}, 'nyud': {'nyud_dir', 'tops'},
            'siftflow': {'siftflow_dir'}, 'pascalcontext': {'voc_dir', 'context_dir'},
            'toy': {'toy_dir', 'batch_size'}, 'folder': {'data_dir', 'layout', 'classes'}}
    for variant, split in (('train', spec.train_split), ('val', spec.val_split)):
        data, = [layer for layer in read_net(name, variant).layer if layer.type == 'Python']
        module = data.python_param.module
        assert module.startswith('layers.')
        params = json.loads(data.python_param.param_str)
        source = ('sbdd' if data.python_param.layer == 'SBDDSegDataLayer'
                  else module.removeprefix('layers.'))
        has_mean = source in ('voc', 'sbdd', 'pascalcontext', 'toy', 'folder')
        assert set(params) == keys[source] | {'split', 'randomize', 'seed'} | (
            {'mean'} if has_mean else set())
        assert (params['split'], params['randomize'], params['seed']) == (
            split, variant == 'train', 1337)
        if has_mean:
            assert len(params['mean']) == 3 and all(isinstance(v, float) for v in params['mean'])
        if 'tops' in params:
            assert params['tops'][-1] == 'label' and params['tops'][:-1] == list(spec.modalities)


@pytest.mark.parametrize('name', SEGMENTATION)
def test_deploy_score_has_the_input_size(name, tmp_path):
    spec = MODELS[name]
    net_param = read_net(name, 'deploy')
    types = {layer.type for layer in net_param.layer}
    assert not types & {'Python', 'Dropout', 'SoftmaxWithLoss'}
    assert net_param.layer[0].name == 'input' and net_param.layer[0].type == 'Input'
    net = instantiate(net_param, tmp_path)
    assert sorted(net.outputs) == sorted(head.score for head in spec.heads)
    for size in SIZES:
        reshape(net, spec, size)
        for head in spec.heads:
            assert tuple(net.blobs[head.score].shape) == (1, head.num_classes, *size), size


# The reference's offsets by (body, stride, fc6 kernel). The toy nets' 4x4 fc6 centres its
# output 1.5 pool5 cells (48 px) before a 7x7 one: the pool4 and pool3 crops move by 3 and
# 6 cells, while conv1_1's pad, 48 px smaller, leaves the final crop where it was.
CROP_OFFSETS = {('vgg16', 32, 7): [19], ('vgg16', 16, 7): [5, 27], ('vgg16', 8, 7): [5, 9, 31],
                ('alexnet', 32, 7): [18],
                ('vgg16', 32, 4): [19], ('vgg16', 16, 4): [2, 27], ('vgg16', 8, 4): [2, 3, 31]}


def crop_key(spec):
    return spec.body, spec.stride, spec.fc6_kernel


@pytest.mark.parametrize('name', [name for name in SEGMENTATION
                                  if crop_key(MODELS[name]) in CROP_OFFSETS])
def test_crop_offsets_come_from_the_net(name):
    spec = MODELS[name]
    offsets = CROP_OFFSETS[crop_key(spec)]
    crops = [layer.crop_param for layer in read_net(name, 'deploy').layer
             if layer.type == 'Crop']
    assert [list(c.offset) for c in crops] == [[o] for o in offsets * len(spec.heads)]
    assert {c.axis for c in crops} == {2}


def vgg16_fcn_parameters(spec):
    """(learned, fixed) parameters of a single-body VGG16 FCN, counted from the paper's
    architecture rather than from the generated net."""
    widths = [round(c * spec.width) for c in (64, 64, 128, 128, 256, 256, 256,
                                               512, 512, 512, 512, 512, 512)]
    fc = round(4096 * spec.width)
    inputs = [3] + widths[:-1]
    learned = sum(i * o * 9 + o for i, o in zip(inputs, widths))
    learned += widths[-1] * fc * spec.fc6_kernel ** 2 + fc + fc * fc + fc
    skips = {32: [], 16: [widths[9]], 8: [widths[9], widths[6]]}[spec.stride]
    deconv_kernels = {32: [64], 16: [4, 32], 8: [4, 4, 16]}[spec.stride]
    fixed = 0
    for head in spec.heads:
        k = head.num_classes
        learned += sum(c * k + k for c in [fc] + skips)
        fixed += sum(k * k * size * size for size in deconv_kernels)
    if spec.skip_scales:
        fixed += sum(skips)  # one fixed factor per channel of each scaled pool
    return learned, fixed


@pytest.mark.parametrize('name', sorted(PARAMETERS) + [
    name for name in SEGMENTATION if name.startswith('toy-')])
def test_parameter_counts(name, tmp_path):
    net_param = read_net(name, 'deploy')
    net = instantiate(net_param, tmp_path)
    counts = parameter_counts(net, net_param)
    spec = spec_of(name)
    if name in PARAMETERS:
        assert counts == PARAMETERS[name]
    if name in REFERENCE:  # the released weights fit by name and shape (test_released.py)
        assert param_shapes(net) == reference_shapes(name)
    if spec.body == 'vgg16' and spec.task == 'segmentation' and not spec.fusion:
        assert counts == vgg16_fcn_parameters(spec)


def test_fcn8s_has_the_published_parameter_count():
    assert PARAMETERS['voc-fcn8s'][0] == 134_362_751
    assert vgg16_fcn_parameters(MODELS['voc-fcn8s'])[0] == 134_362_751


@pytest.mark.parametrize('classifier, fcn', [('vgg16', 'voc-fcn32s'),
                                             ('caffenet', 'voc-fcn-alexnet'),
                                             ('toy-vgg16', 'toy-fcn32s')])
def test_classifier_weights_transplant_by_name(classifier, fcn, tmp_path):
    """Every classifier layer up to fc7 has a namesake in the FCN with as many weights:
    fc6/fc7 InnerProducts reshape into convolutions, fc6's kernel covering the classifier's
    whole pool5 (7x7 for VGG16, 6x6 for CaffeNet, 4x4 for the toy's 128x128 input). fc8
    does not carry over."""
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    source = instantiate(read_net(classifier, 'deploy'), tmp_path / 'a')
    target = instantiate(read_net(fcn, 'deploy'), tmp_path / 'b')
    transplanted = [name for name in source.params if name != 'fc8']
    assert transplanted[-2:] == ['fc6', 'fc7'] and 'fc8' in source.params
    for name in transplanted:
        assert [b.count for b in source.params[name]] == [b.count for b in target.params[name]]
    fc6_kernel = tuple(target.params['fc6'][0].shape)[2:]
    assert fc6_kernel == tuple(source.blobs['pool5'].shape)[2:]
    assert fc6_kernel == {'vgg16': (7, 7), 'caffenet': (6, 6), 'toy-vgg16': (4, 4)}[classifier]


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_classifier_deploy_outputs_probabilities(name, tmp_path):
    spec = spec_of(name)
    net = instantiate(read_net(name, 'deploy'), tmp_path)
    head, = spec.heads
    assert tuple(net.blobs['prob'].shape) == (spec.batch_size, head.num_classes)


@pytest.mark.parametrize('name', ['voc-fcn8s', 'voc-fcn-alexnet', 'siftflow-fcn32s',
                                  'toy-fcn16s'])
def test_zero_net_loss_is_log_classes_per_pixel(name, tmp_path):
    """A real forward of the train net: with all parameters zero (Caffe's default fill)
    every class scores 0, so each labelled pixel costs log(classes); the VGG nets sum
    over pixels, FCN-AlexNet averages, and void (255) pixels cost nothing."""
    spec = MODELS[name]
    size = (23, 35)
    net = instantiate(with_input_layer(read_net(name, 'train'), spec, size), tmp_path,
                      caffe.TRAIN)
    rng = np.random.default_rng(0)
    net.blobs['data'].data[...] = rng.normal(0, 50, net.blobs['data'].shape)
    expected = {}
    for index, head in enumerate(spec.heads):
        labels = rng.integers(0, head.num_classes, size)
        labels[:5] = 255
        net.blobs[head.label].data[...] = labels
        valid = np.count_nonzero(labels != 255)
        loss = 'loss' if index == 0 else 'loss' + parts.head_suffix(head)
        expected[loss] = math.log(head.num_classes) * (1 if spec.normalize_loss else valid)
    outputs = net.forward()
    assert {loss: float(outputs[loss]) for loss in expected} == pytest.approx(expected, rel=1e-5)


def test_toy_fcn_forward_with_random_weights(tmp_path):
    """A real forward with random weights: finite, input-sized, and not constant."""
    spec = MODELS['toy-fcn8s']
    net = instantiate(read_net('toy-fcn8s', 'deploy'), tmp_path)
    rng = np.random.default_rng(1)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.normal(0, 0.1, blob.data.shape)
    for size in ((1, 1), (37, 50), (128, 128)):
        reshape(net, spec, size)
        net.blobs['data'].data[...] = rng.normal(0, 50, net.blobs['data'].shape)
        score = net.forward()['score']
        assert score.shape == (1, spec.heads[0].num_classes, *size)
        assert np.isfinite(score).all()
        assert size == (1, 1) or score.std() > 0
