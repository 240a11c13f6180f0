"""FCN-GoogLeNet and the GoogLeNet classifier: shapes, parameter counts, the paper's
changes to the classifier, and surgery from the classifier into the FCN."""
import dataclasses

import numpy as np
import pytest
from google.protobuf import text_format

import caffe
from caffe.proto import caffe_pb2

from fcn import surgery
from models import googlenet
from models.generate import MODELS_DIR
from models.specs import BASE_NETS, MODELS

FCN = 'voc-fcn-googlenet'
SIZES = [(1, 1), (1, 9), (2, 2), (17, 31), (32, 32), (33, 33), (63, 64), (97, 75),
         (224, 224), (375, 500), (500, 375), (500, 500)]


def read_net(name, variant):
    net = caffe_pb2.NetParameter()
    text_format.Merge((MODELS_DIR / name / f'{variant}.prototxt').read_text(), net)
    return net


def instantiate(net_param, tmp_path, weights=None):
    path = tmp_path / 'net.prototxt'
    path.write_text(str(net_param))
    if weights is None:
        return caffe.Net(str(path), caffe.TEST)
    return caffe.Net(str(path), str(weights), caffe.TEST)


def learned_and_fixed(net, net_param):
    """Parameter counts, split by whether any learning rate multiplier is nonzero."""
    fixed_layers = {layer.name for layer in net_param.layer
                    if layer.param and all(p.lr_mult == 0 for p in layer.param)}
    counts = [0, 0]
    for name, blobs in net.params.items():
        counts[name in fixed_layers] += sum(blob.count for blob in blobs)
    return tuple(counts)


@pytest.fixture(scope='module')
def fcn_deploy(tmp_path_factory):
    net_param = read_net(FCN, 'deploy')
    return net_param, instantiate(net_param, tmp_path_factory.mktemp('fcn'))


def test_score_has_the_input_size(fcn_deploy):
    _, net = fcn_deploy
    for size in SIZES:
        net.blobs['data'].reshape(1, 3, *size)
        net.reshape()
        assert tuple(net.blobs['score'].shape) == (1, 21, *size), size


def test_crop_offset_comes_from_the_net_through_the_concats(fcn_deploy):
    net_param, _ = fcn_deploy
    crop, = [layer for layer in net_param.layer if layer.type == 'Crop']
    # conv1 padded by 18 maps x to x / 2 + 15 / 2; four 3x3/2 poolings each subtract 1/2
    # before halving: x / 32 + 15 / 32 - 15 / 16; the 63x63/32 upsampling maps s to
    # 32 s + 31: x + 16.
    assert (list(crop.bottom), crop.crop_param.axis, list(crop.crop_param.offset)) == (
        ['upscore', 'data'], 2, [16])


def test_parameter_counts_are_the_papers_6m(fcn_deploy, tmp_path):
    net_param, net = fcn_deploy
    # the 57 convolutions of the body (5,973,552) and the 1x1 score layer (1024 x 21 + 21);
    # the 63x63 bilinear upsampling of 21 classes is fixed
    learned, fixed = learned_and_fixed(net, net_param)
    assert (learned, fixed) == (5_995_077, 21 * 21 * 63 * 63)
    assert abs(learned - 6e6) < 0.1e6
    classifier_param = read_net('googlenet', 'deploy')
    classifier = instantiate(classifier_param, tmp_path)
    # the body and the 1024 x 1000 + 1000 InnerProduct loss3/classifier
    assert learned_and_fixed(classifier, classifier_param) == (6_998_552, 0)
    assert tuple(classifier.blobs['prob'].shape) == (1, 1000)
    assert tuple(classifier.blobs['inception_5b/output'].shape) == (1, 1024, 7, 7)


def test_the_paper_changes_only_the_classifier_end():
    """The final average pooling and the auxiliary heads gone, loss3/classifier replaced
    by the 1x1 score_fr, the classifier's dropout kept; the body as the zoo net's but for
    conv1's padding."""
    classifier = read_net('googlenet', 'deploy').layer
    train = read_net(FCN, 'train').layer
    names = [layer.name for layer in train]
    assert not [name for name in names if name.startswith(('loss1', 'loss2', 'pool5'))]
    for layer in classifier:
        if layer.name in ('input', 'pool5/7x7_s1', 'loss3/classifier', 'prob'):
            continue
        same = caffe_pb2.LayerParameter()
        same.CopyFrom(train[names.index(layer.name)])
        if layer.name == 'conv1/7x7_s2':
            assert list(same.convolution_param.pad) == [googlenet.FCN_PAD]
            same.convolution_param.pad[:] = [googlenet.CLASSIFIER_PAD]
        assert same == layer
    assert len([layer for layer in train if layer.type == 'Concat']) == 9
    drop, = [layer for layer in train if layer.type == 'Dropout']
    assert (list(drop.bottom), drop.dropout_param.dropout_ratio) == (
        ['inception_5b/output'], pytest.approx(0.4))
    assert names[-4:] == ['score_fr', 'upscore', 'score', 'loss']
    loss = train[-1]
    assert loss.loss_param.normalize and loss.loss_param.ignore_label == 255
    upscore = train[-3]
    assert (upscore.convolution_param.kernel_size, upscore.convolution_param.stride,
            upscore.convolution_param.bias_term, upscore.param[0].lr_mult) == ([63], [32],
                                                                              False, 0)


def narrow(name, width=1 / 8):
    """A table net at a fraction of the width, for fast surgery."""
    return dataclasses.replace({**MODELS, **BASE_NETS}[name], width=width)


def test_surgery_round_trip(tmp_path):
    """Random classifier weights: to-fcn copies every layer of the body unchanged and
    drops loss3/classifier; the FCN's features of an image equal the classifier's of the
    image with the FCN's extra conv1 padding (15 pixels of zeros) added around it."""
    classifier_path, fcn_path = tmp_path / 'classifier.prototxt', tmp_path / 'fcn.prototxt'
    classifier_path.write_text(str(googlenet.classifier(narrow('googlenet'), 'deploy')))
    fcn_path.write_text(str(googlenet.fcn(narrow(FCN), 'deploy')))
    classifier = caffe.Net(str(classifier_path), caffe.TEST)
    rng = np.random.default_rng(0)
    for blobs in classifier.params.values():
        for blob in blobs:
            blob.data[...] = rng.normal(0, 0.1, blob.data.shape)
    weights, out = tmp_path / 'classifier.caffemodel', tmp_path / 'fcn.caffemodel'
    classifier.save(str(weights))

    report = surgery.to_fcn(classifier_path, weights, fcn_path, out)
    assert report.dropped == ['loss3/classifier'] and not report.coerced
    assert sorted(report.initialised) == ['score_fr', 'upscore']
    assert set(report.copied) == set(classifier.params) - {'loss3/classifier'}

    fcn = caffe.Net(str(fcn_path), str(out), caffe.TEST)
    for name in report.copied:
        for old, new in zip(classifier.params[name], fcn.params[name]):
            np.testing.assert_array_equal(new.data, old.data)
    extra = googlenet.FCN_PAD - googlenet.CLASSIFIER_PAD
    image = rng.normal(0, 50, (1, 3, 64, 80)).astype(np.float32)
    fcn.blobs['data'].reshape(*image.shape)
    fcn.blobs['data'].data[...] = image
    fcn.forward()
    padded = np.pad(image, ((0, 0), (0, 0), (extra, extra), (extra, extra)))
    classifier.blobs['data'].reshape(*padded.shape)
    classifier.blobs['data'].data[...] = padded
    classifier.forward(end='inception_5b/output')
    ours, theirs = (net.blobs['inception_5b/output'].data for net in (fcn, classifier))
    assert ours.shape == theirs.shape and ours.std() > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_narrow_nets_keep_the_topology():
    """The width multiplier (for toy nets) scales every convolution, names unchanged."""
    full, thin = (googlenet.fcn(spec, 'deploy') for spec in (MODELS[FCN], narrow(FCN)))
    assert [layer.name for layer in full.layer] == [layer.name for layer in thin.layer]
    outputs = {layer.name: layer.convolution_param.num_output for layer in thin.layer
               if layer.type == 'Convolution'}
    assert outputs['inception_5b/3x3'] == 48 and outputs['score_fr'] == 21
