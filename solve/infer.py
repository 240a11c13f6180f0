#!/usr/bin/env python3
"""Segment images with a trained FCN: for every image a label PNG (the dataset's palette,
class ids as pixel values) and an overlay on the image with a legend of the classes
present, at the image's own size.

  infer.py MODEL --weights W|released IMAGE|FOLDER... [--out DIR] [--probabilities]
           [--max-side PIXELS] [--cpu | --gpu N] [--runtime caffe|opencv]
  infer.py MODEL --runtime onnxruntime --onnx FILE IMAGE|FOLDER... [--out DIR] ...

The net runs on Caffe (the default), on OpenCV's DNN module (`--runtime opencv`, which
reads the deploy prototxt and the caffemodel itself) or on ONNX Runtime (`--runtime
onnxruntime --onnx FILE`, the file solve/export.py writes of the model and its weights).
The OpenCV and ONNX Runtime paths never import Caffe: a virtualenv with only numpy,
pillow and the runtime runs them (`make venv-infer`). Both run on the CPU; their scores
agree with Caffe's (tests/test_runtimes.py).

`--weights released` takes the reference release's weights of MODEL (fetched and verified
if not yet in weights/released/). Weights are checked before Caffe reads them: a file cut
short or of another kind is refused, and so are weights lacking layers of MODEL's net
(another model's) unless --allow-missing-layers. A FOLDER stands for the images in it
(not its subfolders). Any image PIL reads: grey, palette, RGBA (transparency shown over white),
CMYK, 16-bit; EXIF orientation is applied, so the labels line up with the picture as
viewers show it. The model's deploy net takes one 3-channel input of any size: an RGB
photo for most models, an HHA image for nyud-fcn32s-hha. Its mean is the one the model
was trained with.

Writes DIR/<image name>.png and DIR/<image name>_overlay.png, with --probabilities also
DIR/<image name>_prob.npz (float32 softmax probabilities `prob`, classes x height x width,
and the class names `classes`). With several heads (SIFT Flow) one set per head, suffixed
by the head's label. Default DIR: runs/MODEL/infer (runs/released/MODEL/infer for the
released weights).

The net runs at the image's size, as the reference's did; VGG16 FCNs need several GB for a
photo of a few megapixels. --max-side shrinks larger images for the net so that their
longer side has that many pixels; the scores are then interpolated back to the image's
size (bilinear) before the labels are taken.
"""
import argparse
from pathlib import Path

from fcn import inference, nets, runs, runtimes
from fcn.errors import run_command
from fcn.runtime import devices


def load_runtime(args):
    """The runtime (fcn.runtimes) of the model's deploy net and weights."""
    prototxt = nets.model_file(args.model, 'deploy')
    weights = None if args.weights is None else nets.weights_file(args.model, args.weights)
    runtime = runtimes.deploy_runtime(args.runtime, prototxt, weights, args.onnx)
    if runtime is None:
        devices.select_device(args)
        runtime = runtimes.CaffeRuntime(nets.load_net(
            prototxt, weights, allow_missing_layers=args.allow_missing_layers))
    return runtime


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='model name (models/specs.py or models/user/)')
    parser.add_argument('images', nargs='+', metavar='IMAGE|FOLDER')
    parser.add_argument('--weights',
                        help='trained weights (.caffemodel), or "released" for the reference '
                             "release's weights of MODEL (fetched if absent); not with "
                             '--runtime onnxruntime, whose --onnx file holds them')
    runtimes.add_options(parser, 'what runs the net')
    parser.add_argument('--out', type=Path, help='output folder (default runs/MODEL/infer, '
                        'runs/released/MODEL/infer for the released weights)')
    parser.add_argument('--probabilities', action='store_true',
                        help='also write per-class probabilities (<name>_prob.npz)')
    parser.add_argument('--max-side', type=int, metavar='PIXELS',
                        help='shrink larger images for the net to this longer side')
    parser.add_argument('--allow-missing-layers', action='store_true',
                        help="run even if the weights lack some of the net's layers (they "
                        "keep what the prototxt fills them with, zeros for most); without "
                        "it such weights, another net's, are refused")
    devices.add_device_args(parser)
    args = parser.parse_args(argv)
    problem = runtimes.option_problem(args)
    if problem:
        parser.error(problem)
    spec = nets.model_spec(args.model)
    images = inference.image_paths(args.images)
    if args.max_side is not None and args.max_side < 1:
        parser.error('--max-side must be a positive number of pixels')
    runtime = load_runtime(args)
    released = args.weights == nets.RELEASED
    inference.single_input(runtime, args.model)
    out = args.out or (runs.released_folder(args.model) if released
                       else runs.run_folder(args.model)).infer
    names = {h.label: nets.class_names(spec, h) for h in spec.heads}
    inference.infer_files(runtime, spec.heads, inference.input_mean(spec), images,
                          out, names, args.probabilities,
                          args.max_side, label=f'infer {args.model}'
                          + ('' if args.runtime == 'caffe' else f' ({args.runtime})'))
    print(f'wrote {len(images)} images\' labels and overlays to {out}')


if __name__ == '__main__':
    run_command(main)
