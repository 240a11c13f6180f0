#!/usr/bin/env python3
"""OpenCV and ONNX Runtime against Caffe on every FCN deploy net (`make check-runtimes`).

  python -m checks.runtimes [MODEL ...] [--width W] [--sizes 37x53,61x45]

For each model (default: every FCN of the model table) its deploy net at `width` (1: the
real shapes) gets random weights; the caffemodel Caffe saves is what OpenCV reads
(cv2.dnn.readNetFromCaffe), and the project's converter writes the ONNX model ONNX
Runtime runs. Each input size is fed to all three with the same random input; for every
output of the net, one line: the largest difference from Caffe's scores relative to
their range, and the share of pixels whose argmax agrees (counting as agreeing a class
whose Caffe score ties with the highest within 1e-4 of the range: tied_argmax), and
exactly. It fails unless every line is within 1e-4 and at least 99.99%.
"""
import argparse
from dataclasses import dataclass, replace

import numpy as np

# Caffe's environment (quiet glog, the BLAS for this CPU) before caffe is imported.
from fcn.runtime import caffe_env  # noqa: F401
from fcn.errors import UsageError, run_command

MAX_RELATIVE = 1e-4
MIN_AGREEMENT = 0.9999


@dataclass(frozen=True)
class Row:
    model: str
    size: tuple
    output: str
    runtime: str
    relative: float
    agreement: float    # pixels whose argmax is Caffe's, or ties with it (tied_argmax)
    exact: float        # pixels whose argmax is Caffe's

    def __str__(self):
        return (f'{self.model:24s} {self.size[0]}x{self.size[1]:<4d} {self.output:10s} '
                f'{self.runtime:12s} {self.relative:9.2e} {100 * self.agreement:8.4f}% '
                f'{100 * self.exact:8.4f}%')

    @property
    def good(self):
        return self.relative <= MAX_RELATIVE and self.agreement >= MIN_AGREEMENT


def randomize(net, rng):
    """Fill every parameter blob of a caffe.Net with values of the scale of trained
    weights (He-like: the spread shrinks with the fan-in), so scores stay finite."""
    for blobs in net.params.values():
        for blob in blobs:
            shape = blob.data.shape
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            blob.data[...] = rng.normal(0, np.sqrt(2 / fan_in), shape)


def tied_argmax(scores, reference):
    """Per pixel: whether the class `scores` ranks first is Caffe's first, or one whose
    Caffe score is within MAX_RELATIVE of the score range of Caffe's highest: a tie that
    the allowed rounding difference decides either way (random weights make such ties;
    one pixel of a 61x45 image is 0.04%)."""
    chosen = scores.argmax(1)
    tolerance = MAX_RELATIVE * float(reference.max() - reference.min())
    chosen_score = np.take_along_axis(reference, chosen[:, None], 1)[:, 0]
    return (chosen == reference.argmax(1)) | (reference.max(1) - chosen_score <= tolerance)


def deploy_text(model, width):
    from models import generate
    from models.specs import MODELS
    spec = MODELS[model]
    if width != 1 and spec.dataset != 'toy':
        spec = replace(spec, width=width)
    return generate.render(spec)[f'{model}/deploy.prototxt']


def compare(model, folder, width=1.0, sizes=((37, 53), (61, 45)), seed=0):
    """The Rows of one model at `width` for each size (height, width); files in folder."""
    import caffe
    from fcn import onnx_export, runtimes
    from fcn.prototxt import read_net
    caffe.set_mode_cpu()
    prototxt = folder / f'{model}.prototxt'
    prototxt.write_text(deploy_text(model, width))
    net = caffe.Net(str(prototxt), caffe.TEST)
    rng = np.random.default_rng(seed)
    randomize(net, rng)
    weights = folder / f'{model}.caffemodel'
    net.save(str(weights))
    onnx_file = folder / f'{model}.onnx'
    onnx_export.save(onnx_export.to_onnx(read_net(prototxt), onnx_export.net_params(net),
                                         model), onnx_file)
    reference = runtimes.CaffeRuntime(net)
    others = (runtimes.OnnxRuntime(onnx_file), runtimes.OpenCVRuntime(prototxt, weights))
    rows = []
    for size in sizes:
        inputs = {name: rng.normal(0, 60, (1, channels, *size)).astype(np.float32)
                  for name, channels in reference.inputs.items()}
        expected = reference.forward(inputs)
        for runtime in others:
            got = runtime.forward(inputs)
            for output, scores in expected.items():
                if got[output].shape != scores.shape:
                    raise UsageError(f'{model} at {size}: {runtime.name} gives {output} of '
                                     f'shape {got[output].shape}, Caffe {scores.shape}')
                spread = float(scores.max() - scores.min()) or 1.0
                relative = float(np.abs(got[output] - scores).max()) / spread
                agreement = float(tied_argmax(got[output], scores).mean())
                exact = float((got[output].argmax(1) == scores.argmax(1)).mean())
                rows.append(Row(model, size, output, runtime.name, relative, agreement, exact))
    return rows


def fcn_models():
    from models.specs import MODELS
    return [name for name, spec in MODELS.items() if spec.heads and 'fcn' in name]


def parse_sizes(text):
    try:
        sizes = [tuple(int(n) for n in part.split('x')) for part in text.split(',')]
    except ValueError:
        sizes = []
    if not sizes or any(len(s) != 2 or min(s) < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f'{text!r}: give sizes as HxW,HxW (e.g. 37x53)')
    return sizes


def main(argv=None):
    import tempfile
    from pathlib import Path
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*', metavar='MODEL')
    parser.add_argument('--width', type=float, default=1.0,
                        help='fraction of the real width (default 1: the real shapes)')
    parser.add_argument('--sizes', type=parse_sizes, default=[(37, 53), (61, 45)],
                        help='input sizes HxW,HxW (default 37x53,61x45)')
    args = parser.parse_args(argv)
    known = fcn_models()
    for model in args.models:
        if model not in known:
            parser.error(f'{model} is not an FCN of the model table ({", ".join(known)})')
    print(f'{"model":24s} {"size":7s} {"output":10s} {"runtime":12s} {"rel. diff":>9s} '
          f'{"argmax":>9s} {"(exact)":>9s}', flush=True)
    bad = []
    for model in args.models or known:
        with tempfile.TemporaryDirectory(prefix='fcn-runtimes-') as folder:
            for row in compare(model, Path(folder), args.width, args.sizes):
                print(row, '' if row.good else '  <- outside the bounds', flush=True)
                bad += [row] if not row.good else []
    if bad:
        raise UsageError(f'{len(bad)} outputs differ from Caffe by more than '
                         f'{MAX_RELATIVE:g} of the score range or agree on fewer than '
                         f'{100 * MIN_AGREEMENT:g}% of the pixels')
    print(f'every output within {MAX_RELATIVE:g} of the score range and argmax agreeing on '
          f'>= {100 * MIN_AGREEMENT:g}% of the pixels')


if __name__ == '__main__':
    run_command(main)
