#!/usr/bin/env python3
"""Net surgery: carry a classifier's weights into a fully convolutional net, and fill
upsampling layers with bilinear interpolation kernels.

The one command makes the base weights every VGG16 or AlexNet FCN starts from:

  surgery.py to-fcn --classifier models/vgg16/deploy.prototxt \\
      --weights VGG_ILSVRC_16_layers.caffemodel \\
      --fcn models/voc-fcn32s/deploy.prototxt --out vgg16-fcn.caffemodel

Layers of the same name are copied. A fully connected layer (InnerProduct) becomes the
convolution of the same name by reshaping: an inner product over a CxHxW input is a
HxW convolution with the same weights laid out the same way, so only the shape of the
weight array changes, never its element count. The output keeps only the layers that
received weights, so FCNs for any class count can start from it.

The same rules initialise a net from any weights file when training starts (solve.py,
`load_weights`), which is how a net is fine-tuned from another: score layers whose shapes
differ (another class count) are re-initialised, and every decision is reported.
"""
import argparse
from pathlib import Path

from fcn import surgery
from fcn.errors import run_command


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    to = commands.add_parser('to-fcn', help='make FCN base weights from a classifier')
    to.add_argument('--classifier', required=True, type=Path,
                    help="the classifier's deploy prototxt")
    to.add_argument('--weights', required=True, type=Path,
                    help="the classifier's weights (.caffemodel)")
    to.add_argument('--fcn', required=True, type=Path, help="an FCN's deploy prototxt")
    to.add_argument('--out', required=True, type=Path, help='where to write the base weights')
    to.add_argument('--suffix', default='',
                    help='FCN layer names carry this suffix (multi-modal nets)')
    args = parser.parse_args(argv)
    report = surgery.to_fcn(args.classifier, args.weights, args.fcn, args.out, args.suffix)
    for line in report.lines():
        print(line)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    run_command(main)
