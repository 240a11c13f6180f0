#!/usr/bin/env python3
"""Write a model's deploy net with its weights as an ONNX model, for runtimes without
Caffe (infer.py --runtime onnxruntime, or any ONNX runtime).

  export.py MODEL --weights W|released --onnx OUT.onnx [--allow-missing-layers]

The weights are checked and loaded by Caffe as infer.py loads them (`--weights released`:
the reference release's, fetched if absent); the project's converter (fcn/onnx_export.py)
then writes the deploy net layer by layer in ONNX opset 17, with the batch, height and
width left free, checks it with onnx.checker and writes it atomically. Its inputs and
outputs are named as the deploy net's blobs (`data` -> `score`; SIFT Flow: `score_sem`
and `score_geo`). The input is what Caffe's net takes: BGR, mean subtracted, N x C x H x W.
"""
import argparse
from pathlib import Path

from fcn import nets, onnx_export
from fcn.errors import run_command


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='model name (models/specs.py or models/user/)')
    parser.add_argument('--weights', required=True,
                        help='trained weights (.caffemodel), or "released" for the reference '
                             "release's weights of MODEL (fetched if absent)")
    parser.add_argument('--onnx', required=True, type=Path, metavar='OUT.onnx',
                        help='the ONNX file to write')
    parser.add_argument('--allow-missing-layers', action='store_true',
                        help="export even if the weights lack some of the net's layers (they "
                        'keep what the prototxt fills them with)')
    args = parser.parse_args(argv)
    nets.model_spec(args.model)
    if not args.onnx.parent.is_dir():
        parser.error(f'--onnx {args.onnx}: no folder {args.onnx.parent}')
    weights = nets.weights_file(args.model, args.weights)
    onnx_export.export(nets.model_file(args.model, 'deploy'), weights, args.onnx,
                       allow_missing_layers=args.allow_missing_layers)
    print(f'wrote {args.onnx} (ONNX opset {onnx_export.OPSET}) of {args.model} with {weights}')


if __name__ == '__main__':
    run_command(main)
