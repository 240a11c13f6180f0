"""The Caffe foundation: a from-source pycaffe whose Python layers run forward and backward."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import caffe
from caffe import layers as L, params as P

from fcn.paths import REPO


class ScaledRampLayer(caffe.Layer):
    """A Python layer with a JSON parameter: top = scale * bottom, so its gradient is known."""

    def setup(self, bottom, top):
        self.scale = json.loads(self.param_str)['scale']

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.scale * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self.scale * top[0].diff


def test_import_points_at_the_from_source_build():
    build_info = json.loads(subprocess.run(
        [sys.executable, str(REPO / 'caffe-build' / 'build.py'), '--info', '--no-pth'],
        capture_output=True, text=True, check=True).stdout)
    assert Path(caffe.__file__).resolve().is_relative_to(Path(build_info['pythonpath']).resolve())


def test_python_layer_forward_and_backward_on_cpu(tmp_path):
    caffe.set_mode_cpu()
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 9, 7]))
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1,
                           weight_filler=dict(type='gaussian', std=0.1),
                           bias_filler=dict(type='constant', value=0.5))
    n.ramp = L.Python(n.conv, module=Path(__file__).stem, layer='ScaledRampLayer',
                      param_str=json.dumps({'scale': 3.0}))
    n.loss = L.Reduction(n.ramp, operation=P.Reduction.SUM, loss_weight=1)
    proto = tmp_path / 'net.prototxt'
    proto.write_text(str(n.to_proto()))
    net = caffe.Net(str(proto), caffe.TRAIN)

    rng = np.random.default_rng(0)
    net.blobs['data'].data[...] = rng.standard_normal(net.blobs['data'].data.shape)
    net.forward()
    assert np.allclose(net.blobs['ramp'].data, 3.0 * net.blobs['conv'].data)
    assert net.blobs['loss'].data == pytest.approx(net.blobs['ramp'].data.sum(), rel=1e-5)

    net.backward()
    # d(sum of 3 * conv)/d(conv bias) = 3 for every output position.
    positions = np.prod(net.blobs['conv'].data.shape) // 4
    assert np.allclose(net.params['conv'][1].diff, 3.0 * positions)
    # ... and the weight gradient equals 3 * the sum of the inputs each weight touches.
    padded = np.pad(net.blobs['data'].data, ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = np.empty((3, 3, 3))
    for i in range(3):
        for j in range(3):
            expected[:, i, j] = 3.0 * padded[:, :, i:i + 9, j:j + 7].sum(axis=(0, 2, 3))
    assert np.allclose(net.params['conv'][0].diff, expected[None], rtol=1e-4)


def test_max_pooling_backward_stays_inside_its_buffer_on_nan_windows(tmp_path):
    """A window of NaNs has no maximum; its gradient must not land in a neighbour's memory
    (unpatched Caffe adds it at index -1: here, the last pixel of the previous channel)."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, 2, 2]))
    n.pool = L.Pooling(n.data, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    proto = tmp_path / 'pool.prototxt'
    proto.write_text('force_backward: true\n' + str(n.to_proto()))
    net = caffe.Net(str(proto), caffe.TRAIN)
    net.blobs['data'].data[0, 0] = [[4.0, 1.0], [2.0, 3.0]]
    net.blobs['data'].data[0, 1] = np.nan
    net.forward()
    net.blobs['pool'].diff[...] = 1.0
    net.backward()
    assert net.blobs['data'].diff[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert not net.blobs['data'].diff[0, 1].any()
