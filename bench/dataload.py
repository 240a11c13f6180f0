"""A fixture set in PASCAL VOC's layout, and a one-layer net that reads it with the project's
VOC data layer, to time what the training loop spends on loading one image and its label.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from bench import nets
from fcn import prototxt

SPLIT = 'bench'
PASCAL_MEAN_BGR = (104.00699, 116.66877, 122.67892)


def write_voc_fixture(root, count, width, height, seed):
    """`count` JPEG images with palette-PNG labels of VOC's size and kind under `root`.

    The images are smooth fields with fine noise, so they compress (and decode) about like
    photographs rather than like white noise; labels hold a few class blobs with void edges.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    for folder in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        (root / folder).mkdir(parents=True, exist_ok=True)
    palette = rng.integers(0, 256, 3 * 256).astype(np.uint8).tolist()
    names = []
    for index in range(count):
        name = f'bench_{index:04d}'
        coarse = rng.uniform(0, 255, (height // 25 + 1, width // 25 + 1, 3)).astype(np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
        noisy = np.clip(field + rng.normal(0, 8, field.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(root / 'JPEGImages' / f'{name}.jpg', quality=90)
        label = np.zeros((height, width), np.uint8)
        for _ in range(3):
            top, left = rng.integers(2, height // 2), rng.integers(2, width // 2)
            bottom = top + rng.integers(height // 8 + 1, height // 2)
            right = left + rng.integers(width // 8 + 1, width // 2)
            label[top - 2:bottom + 2, left - 2:right + 2] = nets.VOID_LABEL
            label[top:bottom, left:right] = rng.integers(1, nets.NUM_CLASSES)
        png = Image.fromarray(label, mode='P')
        png.putpalette(palette)
        png.save(root / 'SegmentationClass' / f'{name}.png')
        names.append(name)
    (root / 'ImageSets' / 'Segmentation' / f'{SPLIT}.txt').write_text('\n'.join(names) + '\n')
    return names


def data_layer_net(scratch, config):
    """A net that is only `layers.voc.VOCSegDataLayer` over a fresh fixture set."""
    root = scratch / 'voc-fixture'
    write_voc_fixture(root, config['images'], config['width'], config['height'], config['seed'])
    pb = prototxt.caffe_pb2()
    net = pb.NetParameter(name='voc-data-layer')
    layer = net.layer.add(name='data', type='Python', top=['data', 'label'])
    layer.python_param.module = 'layers.voc'
    layer.python_param.layer = 'VOCSegDataLayer'
    layer.python_param.param_str = json.dumps({
        'voc_dir': str(root), 'split': SPLIT, 'mean': list(PASCAL_MEAN_BGR),
        'randomize': False, 'seed': config['seed']})
    path = scratch / 'voc-data-layer.prototxt'
    prototxt.write_text_proto(path, net)
    return path
