#!/usr/bin/env python3
"""Segment images with a trained FCN: a label PNG (the dataset's palette, class ids as
pixel values) and an overlay on the image for every image, at the image's own size.

  infer.py MODEL --weights W IMAGE... [--out DIR] [--cpu | --gpu N]

The model's deploy net takes one 3-channel input of any size: an RGB photo for most
models, an HHA image for nyud-fcn32s-hha. Its mean is the one the model was trained with.
Writes DIR/<image name>.png and DIR/<image name>_overlay.png (default DIR:
runs/MODEL/infer); with several heads (SIFT Flow) one pair per head, suffixed by label.
"""
import argparse
import importlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import netfiles
import viz
from netfiles import UsageError


def input_mean(spec):
    """The BGR mean the model's data layer subtracts (from the table, else the layer's)."""
    params = dict(spec.val_data.params) if spec.val_data else {}
    if 'mean' in params:
        return np.array(params['mean'], np.float32)
    module = importlib.import_module(spec.val_data.layer.rsplit('.', 1)[0])
    name = 'MEAN_HHA' if tuple(spec.modalities) == ('hha',) else 'MEAN_BGR'
    return np.asarray(getattr(module, name), np.float32)


def single_input(net, model):
    """The deploy net's one 3-channel input, or an error naming what it takes instead."""
    shapes = {name: net.blobs[name].data.shape for name in net.inputs}
    if len(shapes) != 1 or next(iter(shapes.values()))[1] != 3:
        described = ', '.join(f'{n} ({s[1]} channels)' for n, s in shapes.items())
        raise UsageError(f'{model} takes {described}; infer.py feeds one 3-channel image '
                         f'per input and cannot run it')
    return next(iter(shapes))


def read_rgb(path):
    try:
        with Image.open(path) as image:
            return np.array(image.convert('RGB'))
    except OSError as e:
        raise UsageError(f'cannot read image {path}: {e}') from e


def segment(net, input_name, rgb, mean, heads):
    """Class ids per pixel of one HxWx3 RGB image: {head label: HxW uint8}."""
    bgr = rgb[:, :, ::-1].astype(np.float32) - mean
    net.blobs[input_name].reshape(1, 3, *rgb.shape[:2])
    net.blobs[input_name].data[0] = bgr.transpose(2, 0, 1)
    net.reshape()
    net.forward()
    labels = {}
    for head in heads:
        scores = net.blobs[head.score].data[0]
        if scores.shape[1:] != rgb.shape[:2]:
            raise UsageError(f'{head.score} is {scores.shape[1]}x{scores.shape[2]} for a '
                             f'{rgb.shape[0]}x{rgb.shape[1]} image: not a deploy FCN')
        labels[head.label] = scores.argmax(0).astype(np.uint8)
    return labels


def infer_files(net, heads, mean, paths, out_dir):
    """Segment image files into out_dir; returns the label PNGs written."""
    input_name = single_input(net, 'the net')
    written = []
    for index, path in enumerate(paths, 1):
        rgb = read_rgb(path)
        for label, pred in segment(net, input_name, rgb, mean, heads).items():
            stem = Path(path).stem + ('' if len(heads) == 1 else f'_{label}')
            viz.save_label_png(Path(out_dir) / f'{stem}.png', pred)
            viz.save_rgb_png(Path(out_dir) / f'{stem}_overlay.png', viz.overlay(rgb, pred))
            written.append(Path(out_dir) / f'{stem}.png')
        print(f'{index}/{len(paths)} {path}', flush=True)
    return written


def main(argv=None):
    import devices
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='model name (models/specs.py)')
    parser.add_argument('images', nargs='+', type=Path, metavar='IMAGE')
    parser.add_argument('--weights', required=True, type=Path, help='trained weights')
    parser.add_argument('--out', type=Path, help='output folder (default runs/MODEL/infer)')
    devices.add_device_args(parser)
    args = parser.parse_args(argv)
    spec = netfiles.model_spec(args.model)
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise UsageError(f'no such image: {", ".join(missing)}')
    devices.select_device(args)
    net = netfiles.load_net(netfiles.model_file(args.model, 'deploy'), args.weights)
    single_input(net, args.model)
    out = args.out or netfiles.RUNS_DIR / args.model / 'infer'
    infer_files(net, spec.heads, input_mean(spec), args.images, out)
    print(f'wrote {out}')


if __name__ == '__main__':
    sys.exit(main())
