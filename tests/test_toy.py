"""The embedded toy set: deterministic, in the VOC layout, read by the project's layers."""
import colorsys
import json

import numpy as np
from PIL import Image

import caffe
from caffe import layers as L
from data import toy

SMALL = dict(seg_train=4, seg_val=3, cls_train=4, cls_val=2, seg_size=64, cls_size=224)


def files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_same_seed_same_set_other_seed_other_set(tmp_path):
    a = toy.generate(tmp_path / 'a', seed=3, **SMALL)
    toy.generate(tmp_path / 'b', seed=3, **SMALL)
    toy.generate(tmp_path / 'c', seed=4, **SMALL)
    assert files(tmp_path / 'a') == files(tmp_path / 'b')
    assert files(tmp_path / 'a') != files(tmp_path / 'c')
    assert a['classes'] == list(toy.CLASS_NAMES)
    # A finished set with the same parameters is recognised and left alone.
    stamp = (tmp_path / 'a' / toy.META_NAME).stat().st_mtime_ns
    toy.generate(tmp_path / 'a', seed=3, **SMALL)
    assert (tmp_path / 'a' / toy.META_NAME).stat().st_mtime_ns == stamp


def test_voc_layout_with_palette_labels(tmp_path):
    root = tmp_path / 'toy'
    toy.generate(root, seed=1, **SMALL)
    for split, count in (('train', 4), ('val', 3)):
        ids = (root / 'ImageSets' / 'Segmentation' / f'{split}.txt').read_text().split()
        assert len(ids) == count
        for image_id in ids:
            image = Image.open(root / 'JPEGImages' / f'{image_id}.jpg')
            label = Image.open(root / 'SegmentationClass' / f'{image_id}.png')
            assert label.mode == 'P' and image.size == label.size == (64, 64)
            values = set(np.unique(np.array(label)))
            assert 0 in values and values <= set(range(toy.NUM_CLASSES))


def python_net(path, layer, params, tops):
    n = caffe.NetSpec()
    outputs = L.Python(module=layer.rsplit('.', 1)[0], layer=layer.rsplit('.', 1)[1],
                       param_str=json.dumps(params), ntop=len(tops))
    for name, top in zip(tops, outputs):
        n[name] = top
    path.write_text(str(n.to_proto()))
    return caffe.Net(str(path), caffe.TEST)


def test_layers_read_both_views(tmp_path):
    root = tmp_path / 'toy'
    toy.generate(root, seed=1, **SMALL)
    mean = [104.0, 117.0, 123.0]
    seg = python_net(tmp_path / 'seg.prototxt', 'layers.voc.VOCSegDataLayer',
                     dict(voc_dir=str(root), split='val', mean=mean, randomize=False),
                     ['data', 'label'])
    seg.forward()
    assert seg.blobs['data'].data.shape == (1, 3, 64, 64)
    assert seg.blobs['label'].data.shape == (1, 1, 64, 64)
    assert seg.blobs['label'].data.max() < toy.NUM_CLASSES

    cls = python_net(tmp_path / 'cls.prototxt', 'layers.toy.ToyClassDataLayer',
                     dict(toy_dir=str(root), split='train', mean=mean, batch_size=2),
                     ['data', 'label'])
    cls.forward()
    assert cls.blobs['data'].data.shape == (2, 3, 224, 224)
    labels = cls.blobs['label'].data
    assert labels.shape[0] == 2 and np.all((labels >= 1) & (labels < toy.NUM_CLASSES))


def test_hsv_to_rgb_matches_colorsys():
    rng = np.random.default_rng(2)
    hsv = rng.uniform(0, 1, (50, 3))
    ours = toy.hsv_to_rgb(hsv[:, 0] * 360, hsv[:, 1], hsv[:, 2])
    expected = 255 * np.array([colorsys.hsv_to_rgb(*row) for row in hsv])
    np.testing.assert_allclose(ours, expected, atol=1e-3)


def test_class_is_told_by_hue_alone():
    """Every object pixel's hue lies within hue_jitter (plus rounding and noise) of its
    class's hue, and the background is close to grey."""
    root_params = dict(toy.DEFAULTS, seg_size=96)
    hue_error = {cls: [] for cls in range(1, toy.NUM_CLASSES)}
    background_saturation = []
    for index in range(12):
        image, label = toy.segmentation_scene(np.random.default_rng(index), root_params)
        hsv = np.asarray(Image.fromarray(image).convert('HSV'), np.float32)
        hue, saturation = hsv[..., 0] * 360 / 256, hsv[..., 1] / 255
        bright = hsv[..., 2] > 80  # hue is defined well only away from black
        for cls in hue_error:
            pixels = (label == cls) & bright
            error = (hue[pixels] - toy.CLASS_HUES[cls - 1] + 180) % 360 - 180
            hue_error[cls].extend(np.abs(error))
        background_saturation.extend(saturation[label == 0])
    for cls, errors in hue_error.items():
        assert len(errors) > 0, f'no pixels of class {cls} in 12 scenes'
        assert np.median(errors) < toy.DEFAULTS['hue_jitter'], toy.CLASS_NAMES[cls]
    assert np.median(background_saturation) < toy.DEFAULTS['background_saturation'] + 0.1
    gaps = np.diff(sorted(toy.CLASS_HUES) + [sorted(toy.CLASS_HUES)[0] + 360])
    assert gaps.min() > 2 * toy.DEFAULTS['hue_jitter']
