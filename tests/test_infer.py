"""infer.py: label PNGs and overlays at each image's own size, the labels the net gives.
(Image modes, legends, probabilities and folders: test_released.py.)"""
import numpy as np
import pytest
from PIL import Image

import caffe

from fcn import inference, runtimes
from checks import stress
from fcn import pictures
from fcn.nets import UsageError

caffe.set_mode_cpu()


@pytest.fixture
def deploy_net(tmp_path):
    path = tmp_path / 'deploy.prototxt'
    path.write_text(str(stress.tiny_fcn()))
    net = caffe.Net(str(path), caffe.TEST)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.normal(size=blob.data.shape)
    return net


def test_labels_and_overlays_at_every_image_size(tmp_path, deploy_net):
    rng = np.random.default_rng(1)
    sizes = {'small.png': (17, 23), 'wide.jpg': (20, 61), 'big.png': (48, 40)}
    for name, shape in sizes.items():
        Image.fromarray(rng.integers(0, 255, shape + (3,), dtype=np.uint8)).save(tmp_path / name)
    mean = np.array([100, 110, 120], np.float32)
    written = inference.infer_files(runtimes.CaffeRuntime(deploy_net), stress.heads(), mean,
                                    [tmp_path / name for name in sizes], tmp_path / 'out')
    assert [p.name for p in written] == ['small.png', 'wide.png', 'big.png']
    for name, shape in sizes.items():
        stem = name.split('.')[0]
        label = pictures.read_label_png(tmp_path / 'out' / f'{stem}.png')
        assert label.shape == shape
        with Image.open(tmp_path / 'out' / f'{stem}_overlay.png') as overlay:
            # the image's overlay at its size, the legend to its right
            assert overlay.width > shape[1] and overlay.height >= shape[0]
            assert overlay.mode == 'RGB'
        # the PNG holds exactly the net's argmax for the mean-subtracted BGR image
        rgb = np.array(Image.open(tmp_path / name).convert('RGB'))
        deploy_net.blobs['data'].reshape(1, 3, *shape)
        deploy_net.blobs['data'].data[0] = (rgb[:, :, ::-1] - mean).transpose(2, 0, 1)
        deploy_net.forward()
        np.testing.assert_array_equal(label, deploy_net.blobs['score'].data[0].argmax(0))
    assert len(np.unique(label)) > 1  # random weights still make a non-trivial map


def test_nets_with_other_inputs_are_refused(tmp_path):
    from caffe import layers as L
    n = caffe.NetSpec()
    n.color = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.hha = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.score = L.Eltwise(n.color, n.hha)
    path = tmp_path / 'fused.prototxt'
    path.write_text(str(n.to_proto()))
    with pytest.raises(UsageError, match=r'takes color \(3 channels\), hha \(3 channels\)'):
        inference.single_input(runtimes.CaffeRuntime(caffe.Net(str(path), caffe.TEST)),
                               'fused')


def test_the_mean_is_the_models_own():
    from models.specs import MODELS
    np.testing.assert_allclose(inference.input_mean(MODELS['voc-fcn8s']),
                               [104.00699, 116.66877, 122.67892])
    np.testing.assert_allclose(inference.input_mean(MODELS['siftflow-fcn8s']),
                               [114.578, 115.294, 108.353], rtol=1e-6)
    np.testing.assert_allclose(inference.input_mean(MODELS['nyud-fcn32s-hha']),
                               [132.431, 94.076, 118.477], rtol=1e-6)
