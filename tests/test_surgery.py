"""surgery.py: a classifier's fully connected layers become convolutions that compute the
same thing; bilinear kernels against Caffe's own bilinear filler and interpolation
properties; the to-fcn command and its refusals."""
import numpy as np
import pytest

import caffe
from caffe import layers as L, params as P

from fcn import surgery
from solve import surgery as surgery_command
from fcn.nets import UsageError

caffe.set_mode_cpu()


def classifier(size=14):
    """conv -> pool to a 4x6x6 'pool5' -> fc6 (10) -> fc7 (8) -> fc8 (5 classes).

    The convolution has no padding, so that a window of a larger image gives the classifier
    exactly the pixels the FCN sees there."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, size, size]))
    n.conv1 = L.Convolution(n.data, num_output=4, kernel_size=3,
                            weight_filler=dict(type='gaussian', std=0.3),
                            bias_filler=dict(type='gaussian', std=0.1))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool5 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.fc6 = L.InnerProduct(n.pool5, num_output=10, weight_filler=dict(type='gaussian', std=0.3),
                           bias_filler=dict(type='gaussian', std=0.1))
    n.relu6 = L.ReLU(n.fc6, in_place=False)
    n.fc7 = L.InnerProduct(n.relu6, num_output=8, weight_filler=dict(type='gaussian', std=0.3),
                           bias_filler=dict(type='gaussian', std=0.1))
    n.fc8 = L.InnerProduct(n.fc7, num_output=5, weight_filler=dict(type='gaussian', std=0.3))
    return n.to_proto()


def fcn(size=14, fc6_kernel=6, fc7_outputs=8):
    """The same net fully convolutional, with a new score layer instead of fc8."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, size, size]))
    n.conv1 = L.Convolution(n.data, num_output=4, kernel_size=3)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool5 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.fc6 = L.Convolution(n.pool5, num_output=10, kernel_size=fc6_kernel)
    n.relu6 = L.ReLU(n.fc6, in_place=False)
    n.fc7 = L.Convolution(n.relu6, num_output=fc7_outputs, kernel_size=1)
    n.score_fr = L.Convolution(n.fc7, num_output=3, kernel_size=1)
    return n.to_proto()


def make_net(tmp_path, proto, name, weights=None):
    path = tmp_path / f'{name}.prototxt'
    path.write_text(str(proto))
    if weights is None:
        return caffe.Net(str(path), caffe.TEST), path
    return caffe.Net(str(path), str(weights), caffe.TEST), path


def test_fully_connected_layers_become_equivalent_convolutions(tmp_path):
    old, _ = make_net(tmp_path, classifier(), 'classifier')
    new, _ = make_net(tmp_path, fcn(size=18), 'fcn')
    report = surgery.transplant(new, old)
    assert report.copied == ['conv1']
    assert report.coerced == ['fc6', 'fc7']
    assert report.dropped == ['fc8']
    assert report.initialised == ['score_fr']
    for blob_old, blob_new in zip(old.params['conv1'], new.params['conv1']):
        np.testing.assert_array_equal(blob_old.data, blob_new.data)

    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 3, 18, 18)).astype(np.float32)
    new.blobs['data'].data[...] = image
    new.forward()
    assert new.blobs['fc6'].data.shape == (1, 10, 3, 3)  # 18x18 input: 3x3 classifier windows
    # Each output position of the FCN is the classifier applied to one 14x14 window
    # (the window moves by the pool's stride, 2 pixels).
    for i, j in [(0, 0), (1, 2), (2, 2)]:
        old.blobs['data'].data[...] = image[:, :, 2 * i:2 * i + 14, 2 * j:2 * j + 14]
        old.forward()
        for layer in ('fc6', 'fc7'):
            np.testing.assert_allclose(new.blobs[layer].data[0, :, i, j],
                                       old.blobs[layer].data[0], rtol=1e-5, atol=1e-5)


def test_element_counts_that_differ_are_refused(tmp_path):
    old, _ = make_net(tmp_path, classifier(), 'classifier')
    new, _ = make_net(tmp_path, fcn(fc6_kernel=5), 'fcn')
    with pytest.raises(surgery.SurgeryError, match=r'layer fc6 blob 0: source shape \(10, 144\)'):
        surgery.transplant(new, old)


def test_to_fcn_writes_only_the_transplanted_layers(tmp_path, capsys):
    old, classifier_path = make_net(tmp_path, classifier(), 'classifier')
    old.save(str(tmp_path / 'classifier.caffemodel'))
    _, fcn_path = make_net(tmp_path, fcn(), 'fcn')
    out = tmp_path / 'weights' / 'base.caffemodel'  # a folder that does not exist yet
    surgery_command.main(['to-fcn', '--classifier', str(classifier_path), '--weights',
                  str(tmp_path / 'classifier.caffemodel'), '--fcn', str(fcn_path),
                  '--out', str(out)])
    printed = capsys.readouterr().out
    assert 'copied (1): conv1' in printed and 'coerced (2): fc6, fc7' in printed
    assert 'dropped (1): fc8' in printed
    from caffe.proto import caffe_pb2
    saved = caffe_pb2.NetParameter()
    saved.ParseFromString(out.read_bytes())
    assert [layer.name for layer in saved.layer if layer.blobs] == ['conv1', 'fc6', 'fc7']
    # An FCN with another class count starts from the same base weights.
    other, _ = make_net(tmp_path, fcn(), 'other')
    report = surgery.load_weights(other, out)
    assert report.copied == ['conv1', 'fc6', 'fc7'] and report.initialised == ['score_fr']
    np.testing.assert_array_equal(other.params['fc7'][0].data.ravel(),
                                  old.params['fc7'][0].data.ravel())

    _, bad_path = make_net(tmp_path, fcn(fc7_outputs=9), 'bad')
    with pytest.raises(UsageError, match='fc7 blob 0'):
        surgery_command.main(['to-fcn', '--classifier', str(classifier_path), '--weights',
                      str(tmp_path / 'classifier.caffemodel'), '--fcn', str(bad_path),
                      '--out', str(tmp_path / 'never.caffemodel')])
    assert not (tmp_path / 'never.caffemodel').exists()


def test_load_weights_with_a_modality_suffix_and_shape_checks(tmp_path):
    old, _ = make_net(tmp_path, fcn(), 'fcn')
    old.save(str(tmp_path / 'color.caffemodel'))
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 14, 14]))
    n.conv1color = L.Convolution(n.data, num_output=4, kernel_size=3)
    n.conv1hha = L.Convolution(n.data, num_output=4, kernel_size=3)
    fused, _ = make_net(tmp_path, n.to_proto(), 'fused')
    suffix = surgery.modality_suffix(fused, 'color')
    assert suffix == 'color'
    report = surgery.load_weights(fused, tmp_path / 'color.caffemodel', suffix)
    assert report.copied == ['conv1color']
    np.testing.assert_array_equal(fused.params['conv1color'][0].data,
                                  old.params['conv1'][0].data)
    assert not fused.params['conv1hha'][0].data.any()
    wrong, _ = make_net(tmp_path, fcn(fc7_outputs=9), 'wrong')
    with pytest.raises(surgery.SurgeryError,
                       match=r'layer fc7 blob 0: source shape \(8, 10, 1, 1\)'):
        surgery.load_weights(wrong, tmp_path / 'color.caffemodel')


def deconv_net(tmp_path, channels, kernel, stride, group=1, filler=None, size=6):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, channels, size, size]))
    param = dict(num_output=channels, kernel_size=kernel, stride=stride, bias_term=False,
                 group=group)
    if filler:
        param['weight_filler'] = dict(type=filler)
    n.up = L.Deconvolution(n.data, convolution_param=param)
    net, _ = make_net(tmp_path, n.to_proto(), f'deconv{kernel}_{group}_{filler}')
    return net


@pytest.mark.parametrize('factor', [2, 4, 8, 16, 32])
def test_bilinear_kernels_match_caffes_bilinear_filler(tmp_path, factor):
    # Caffe's filler fills every (input, output) pair, so compare on a grouped layer
    # (one output per group), where both mean the same thing.
    ours = deconv_net(tmp_path, 2, 2 * factor, factor, group=2, size=2)
    caffes = deconv_net(tmp_path, 2, 2 * factor, factor, group=2, filler='bilinear', size=2)
    assert surgery.interp(ours) == ['up']
    np.testing.assert_allclose(ours.params['up'][0].data, caffes.params['up'][0].data,
                               atol=1e-6)


@pytest.mark.parametrize('kernel,factor', [(4, 2), (16, 8), (63, 32), (64, 32)])
def test_bilinear_kernels_interpolate(kernel, factor):
    kernel2d = surgery.upsample_filter(kernel)
    taps = np.sqrt(np.diag(kernel2d))
    np.testing.assert_allclose(kernel2d, np.outer(taps, taps))  # separable
    np.testing.assert_allclose(taps, taps[::-1])  # symmetric about the centre
    # the weights every output pixel gets from the inputs sum to 1 (partition of unity)
    sums = [taps[r::factor].sum() for r in range(factor)]
    np.testing.assert_allclose(sums, 1.0)


def test_upsampling_reproduces_a_linear_ramp(tmp_path):
    """Bilinear interpolation is exact on linear functions: upsample a ramp by 4."""
    net = deconv_net(tmp_path, 3, 8, 4, size=6)
    surgery.interp(net)
    ramp = np.add.outer(np.arange(6.0), 2 * np.arange(6.0))
    net.blobs['data'].data[0] = [ramp, 2 * ramp, -ramp]
    net.forward()
    up = net.blobs['up'].data[0]
    # each channel upsamples only itself
    np.testing.assert_allclose(up[1], 2 * up[0], atol=1e-4)
    np.testing.assert_allclose(up[2], -up[0], atol=1e-4)
    interior = up[0, 4:-4, 4:-4]  # away from the zero padding at the borders
    np.testing.assert_allclose(np.diff(interior, axis=0), 0.25, atol=1e-5)
    np.testing.assert_allclose(np.diff(interior, axis=1), 0.5, atol=1e-5)


def test_interp_refuses_kernels_it_cannot_fill(tmp_path):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, 4, 4]))
    n.up = L.Deconvolution(n.data, convolution_param=dict(
        num_output=2, kernel_h=4, kernel_w=2, stride=2, bias_term=False))
    net, _ = make_net(tmp_path, n.to_proto(), 'rect')
    with pytest.raises(surgery.SurgeryError, match='square'):
        surgery.interp(net)
    n.up = L.Deconvolution(n.data, convolution_param=dict(
        num_output=3, kernel_size=4, stride=2, bias_term=False))
    net, _ = make_net(tmp_path, n.to_proto(), 'channels')
    with pytest.raises(surgery.SurgeryError, match='2 input and 3 output'):
        surgery.interp(net)


def test_expand_score_keeps_the_old_classes(tmp_path):
    small, _ = make_net(tmp_path, fcn(), 'small')
    small.params['score_fr'][0].data[...] = np.random.default_rng(0).normal(
        size=small.params['score_fr'][0].data.shape)
    proto = fcn()
    proto.layer[-1].convolution_param.num_output = 5
    big, _ = make_net(tmp_path, proto, 'big')
    surgery.expand_score(big, 'score_fr', small, 'score_fr')
    np.testing.assert_array_equal(big.params['score_fr'][0].data[:3],
                                  small.params['score_fr'][0].data)
    assert not big.params['score_fr'][0].data[3:].any()
    with pytest.raises(surgery.SurgeryError):
        surgery.expand_score(small, 'score_fr', big, 'score_fr')


# ---- fine-tuning: initialising a net from another's weights -------------------------

def scored_fcn(classes, fc6_kernel=6):
    """fcn() with a score layer and a fixed upsampling for `classes`, random body weights."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 14, 14]))
    gaussian = dict(weight_filler=dict(type='gaussian', std=0.3),
                    bias_filler=dict(type='gaussian', std=0.1))
    n.conv1 = L.Convolution(n.data, num_output=4, kernel_size=3, **gaussian)
    n.pool5 = L.Pooling(n.conv1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.fc6 = L.Convolution(n.pool5, num_output=10, kernel_size=fc6_kernel, **gaussian)
    n.score_fr = L.Convolution(n.fc6, num_output=classes, kernel_size=1, **gaussian)
    n.upscore = L.Deconvolution(n.score_fr, convolution_param=dict(
        num_output=classes, kernel_size=4, stride=2, bias_term=False))
    return n.to_proto()


def test_fine_tuning_to_other_classes_copies_the_body_and_starts_the_scores_afresh(tmp_path):
    source, _ = make_net(tmp_path, scored_fcn(3), 'three')
    source.save(str(tmp_path / 'three.caffemodel'))
    # The target's score layer has a filler: re-initialised means left as it filled it.
    proto = scored_fcn(4)
    target, _ = make_net(tmp_path, proto, 'four')
    filled = target.params['score_fr'][0].data.copy()
    report = surgery.load_weights(target, tmp_path / 'three.caffemodel')
    assert report.copied == ['conv1', 'fc6']
    assert report.reinitialised == ['score_fr', 'upscore']
    assert report.coerced == report.dropped == report.initialised == []
    for layer in ('conv1', 'fc6'):
        for old, new in zip(source.params[layer], target.params[layer]):
            np.testing.assert_array_equal(new.data, old.data)
    np.testing.assert_array_equal(target.params['score_fr'][0].data, filled)
    assert any('re-initialised for the classes (2): score_fr, upscore' == line
               for line in report.lines())


def test_same_class_count_copies_the_scores_unless_they_are_fresh(tmp_path):
    source, _ = make_net(tmp_path, scored_fcn(3), 'a')
    source.save(str(tmp_path / 'a.caffemodel'))
    kept, _ = make_net(tmp_path, scored_fcn(3), 'kept')
    assert surgery.load_weights(kept, tmp_path / 'a.caffemodel').copied == [
        'conv1', 'fc6', 'score_fr', 'upscore']
    np.testing.assert_array_equal(kept.params['score_fr'][0].data,
                                  source.params['score_fr'][0].data)
    fresh, _ = make_net(tmp_path, scored_fcn(3), 'fresh')
    filled = fresh.params['score_fr'][0].data.copy()
    report = surgery.load_weights(fresh, tmp_path / 'a.caffemodel', fresh_scores=True)
    assert report.reinitialised == ['score_fr', 'upscore'] and report.copied == ['conv1', 'fc6']
    np.testing.assert_array_equal(fresh.params['score_fr'][0].data, filled)


def test_loading_a_classifiers_weights_coerces_its_fully_connected_layers(tmp_path):
    """load_weights takes an InnerProduct's weights into the convolution of the same name
    (as to-fcn does); a body layer of another size is still refused."""
    old, _ = make_net(tmp_path, classifier(), 'classifier')
    old.save(str(tmp_path / 'classifier.caffemodel'))
    new, _ = make_net(tmp_path, fcn(), 'fcn')
    report = surgery.load_weights(new, tmp_path / 'classifier.caffemodel')
    assert report.copied == ['conv1'] and report.coerced == ['fc6', 'fc7']
    assert report.dropped == ['fc8'] and report.initialised == ['score_fr']
    np.testing.assert_array_equal(new.params['fc6'][0].data.reshape(10, -1),
                                  old.params['fc6'][0].data)
    smaller, _ = make_net(tmp_path, scored_fcn(3, fc6_kernel=5), 'smaller')
    with pytest.raises(surgery.SurgeryError, match=r'layer fc6 blob 0: source shape \(10, 144\)'):
        surgery.load_weights(smaller, tmp_path / 'classifier.caffemodel')
