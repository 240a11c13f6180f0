"""models.coord: crop offsets through Concat, against hand-computed offsets on small
inception-like nets, and Caffe's own offsets wherever Caffe can compute them."""
import numpy as np
import pytest

import caffe
from caffe import coord_map as caffe_coord_map
from caffe import layers as L, params as P

from models import coord


def conv(bottom, ks, stride=1, pad=0, nout=1):
    return L.Convolution(bottom, num_output=nout, kernel_size=ks, stride=stride, pad=pad,
                         bias_term=False)


def module(bottom, nout=1):
    """An inception module: 1x1, 1x1 -> 3x3, 1x1 -> 5x5, 3x3/1 max pool -> 1x1; each
    branch keeps the grid of its input."""
    return L.Concat(conv(bottom, 1, nout=nout),
                    conv(conv(bottom, 1, nout=nout), 3, pad=1, nout=nout),
                    conv(conv(bottom, 1, nout=nout), 5, pad=2, nout=nout),
                    conv(L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=3, stride=1,
                                   pad=1), 1, nout=nout))


def single_module_net():
    """data -> 5x5/2 conv padded by 3 -> module -> 3x3/2 deconvolution, cropped to data.

    By hand: the conv maps x to (x + 3 - 2) / 2 = x / 2 + 1 / 2, the module keeps that,
    the deconvolution maps c to 2c + (3 - 1) / 2 = 2c + 1, so x lands on x + 2: offset 2.
    """
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    n.conv0 = conv(n.data, 5, stride=2, pad=3)
    n.module = module(n.conv0)
    n.mix = conv(n.module, 1)
    n.up = L.Deconvolution(n.mix, convolution_param=dict(num_output=1, kernel_size=3,
                                                         stride=2, bias_term=False))
    return n


def test_caffe_alone_cannot_cross_a_concat():
    n = single_module_net()
    with pytest.raises(RuntimeError, match='Could not compute map'):
        caffe_coord_map.crop(n.up, n.data)


def test_offset_through_one_module_is_the_hand_computed_one():
    n = single_module_net()
    axis, scale, shift = coord.coord_map_from_to(n.up, n.data)
    assert (axis, float(scale[0]), float(shift[0])) == (1, 1.0, -2.0)
    n.score = coord.crop(n.up, n.data)
    layer = n.to_proto().layer[-1]
    assert (layer.type, layer.crop_param.axis, list(layer.crop_param.offset)) == ('Crop', 2, [2])


def test_the_offset_aligns_pixels_in_caffe(tmp_path):
    """With centre-tap filters the net copies the input pixels the stride-2 convolution
    samples (odd x: 2c - 3 + 2 = x) to their own place, if and only if the crop is right."""
    n = single_module_net()
    n.score = coord.crop(n.up, n.data)
    path = tmp_path / 'net.prototxt'
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    for name, (weights,) in net.params.items():
        weights.data[...] = 0
        k = weights.data.shape[-1]
        # one channel in the net but after the Concat, which `mix` averages (the pooling
        # branch, not an identity, is left out)
        if name == 'mix':
            weights.data[0, :3, 0, 0] = 1 / 3
        else:
            weights.data[..., k // 2, k // 2] = 1
    image = np.random.default_rng(0).uniform(1, 2, (1, 1, 20, 20))
    net.blobs['data'].data[...] = image
    score = net.forward()['score']
    assert score.shape == image.shape
    np.testing.assert_allclose(score[..., 1::2, 1::2], image[..., 1::2, 1::2], rtol=1e-6)
    np.testing.assert_array_equal(score[..., 0::2, :], 0)


def two_module_net():
    """data -> 7x7/2 conv padded by 5 -> module A -> 3x3/2 max pool -> module B, whose
    score is upsampled (5x5/2) onto A's, summed with A's score, and upsampled (3x3/2) to
    the input (an FCN-16s in miniature).

    By hand: conv x -> (x + 5 - 3) / 2 = x / 2 + 1 = a; pool a -> (a - 1) / 2 = p; the
    first deconvolution p -> 2p + 2 = a + 1, so its output is cropped to A's score by 1;
    the second a -> 2a + 1 = x + 3, cropped to the input by 3.
    """
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 37, 41]))
    n.conv0 = conv(n.data, 7, stride=2, pad=5)
    n.module_a = module(n.conv0)
    n.pool = L.Pooling(n.module_a, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    n.module_b = module(n.pool)
    n.score_b = conv(n.module_b, 1)
    n.score_a = conv(n.module_a, 1)
    n.up_b = L.Deconvolution(n.score_b, convolution_param=dict(
        num_output=1, kernel_size=5, stride=2, bias_term=False))
    n.up_bc = coord.crop(n.up_b, n.score_a)
    n.fuse = L.Eltwise(n.up_bc, n.score_a, operation=P.Eltwise.SUM)
    n.up = L.Deconvolution(n.fuse, convolution_param=dict(
        num_output=1, kernel_size=3, stride=2, bias_term=False))
    n.score = coord.crop(n.up, n.data)
    return n


def test_offsets_through_two_modules_and_a_skip_are_the_hand_computed_ones(tmp_path):
    n = two_module_net()
    crops = [layer for layer in n.to_proto().layer if layer.type == 'Crop']
    assert [list(layer.crop_param.offset) for layer in crops] == [[1], [3]]
    path = tmp_path / 'net.prototxt'
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    for size in ((37, 41), (1, 1), (64, 63)):
        net.blobs['data'].reshape(1, 1, *size)
        net.reshape()
        assert net.blobs['score'].data.shape[2:] == size


def test_nets_without_concat_get_caffes_offsets():
    """An FCN-8s in miniature (2x2 pools, 4x4/2 and 16x16/8 deconvolutions, pad 100)."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 50, 50]))
    n.conv1 = conv(n.data, 3, pad=100)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.pool2 = L.Pooling(conv(n.pool1, 3, pad=1), pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.pool3 = L.Pooling(conv(n.pool2, 3, pad=1), pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.fc = conv(n.pool3, 7)
    n.up2 = L.Deconvolution(n.fc, convolution_param=dict(num_output=1, kernel_size=4,
                                                         stride=2, bias_term=False))
    n.skip = conv(n.pool2, 1)
    pairs = [(n.skip, n.up2), (n.up2, n.data), (n.fc, n.pool1), (n.pool3, n.relu1)]
    for top_from, top_to in pairs:
        ours = coord.coord_map_from_to(top_from, top_to)
        caffes = caffe_coord_map.coord_map_from_to(top_from, top_to)
        assert ours[0] == caffes[0]
        np.testing.assert_array_equal(ours[1:], caffes[1:])
    n.skipc = coord.crop(n.skip, n.up2)
    ours = n.to_proto().layer[-1].crop_param
    n.skipc = caffe_coord_map.crop(n.skip, n.up2)
    assert n.to_proto().layer[-1].crop_param == ours


def test_concat_inputs_on_shifted_grids_are_rejected():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    # the 3x3 branch without padding is shifted by one pixel against the 1x1 branch
    n.joined = L.Concat(conv(n.data, 1), conv(n.data, 3))
    n.up = L.Deconvolution(n.joined, convolution_param=dict(num_output=1, kernel_size=1))
    with pytest.raises(coord.CoordMapError, match='different grids.*shift'):
        coord.crop(n.up, n.data)


def test_concat_inputs_of_different_strides_are_rejected():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    n.joined = L.Concat(conv(n.data, 1), conv(n.data, 1, stride=2))
    with pytest.raises(coord.CoordMapError, match='different grids.*scale'):
        coord.coord_map_from_to(n.joined, n.data)


def test_a_spatial_concat_has_no_map():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    n.joined = L.Concat(conv(n.data, 1), conv(n.data, 1), concat_param=dict(axis=3))
    with pytest.raises(coord.CoordMapError, match='share no ancestor'):
        coord.crop(n.joined, n.data)
    n.by_channel = L.Concat(conv(n.data, 1), conv(n.data, 1), concat_param=dict(axis=1))
    assert coord.layer_map(n.by_channel.fn) == coord.IDENTITY


def test_fractional_and_negative_offsets_are_refused():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    # 2x2/2 pooling maps x to x / 2 - 1 / 4, a 3x3/2 deconvolution p to 2p + 1: x + 1 / 2
    n.pool = L.Pooling(n.data, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.up = L.Deconvolution(n.pool, convolution_param=dict(num_output=1, kernel_size=3,
                                                          stride=2))
    with pytest.raises(coord.CoordMapError, match='fractional'):
        coord.crop(n.up, n.data)
    n.big = conv(n.data, 3, pad=2)  # x -> x + 1: data starts inside it
    with pytest.raises(coord.CoordMapError, match='negative'):
        coord.crop(n.data, n.big)
