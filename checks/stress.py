#!/usr/bin/env python3
"""Long-run check: train a tiny FCN for thousands of iterations with solve.py's own code,
in fresh processes, and require each to exit 0 with nothing from glibc's heap checks.

  stress.py [--iterations 3000] [--runs synthetic voc voc-prefetch diverging]

Each run trains the tiny net with a Python data layer (the synthetic layer below, or the
project's layers.voc.VOCSegDataLayer on a small generated VOC-layout set, with and without
prefetching), validates and snapshots along the way, and then lets the interpreter exit on
its own, when Caffe's nets and the Python layers they hold are torn down.

The `diverging` run's learning rate is far too high. Its weights turn NaN, and Caffe's CPU
max pooling, finding no maximum in a window of NaNs, writes its gradient just before its
buffer: before solve.py stopped such a step, this corrupted the heap and the process died
at exit with "double free or corruption (out)". It must now end with solve.py's clear
"training diverged" error (exit 1) and nothing from glibc.

The tiny nets and the synthetic data layer are also the fixtures of the solve/ tests.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fcn.errors import run_command

NUM_CLASSES = 3
# What glibc, the kernel and Python print when a process dies of heap corruption.
CRASH_SIGNS = ('double free', 'corruption', 'free(): invalid', 'malloc(): ', 'Segmentation fault',
               'Aborted', 'Fatal Python error', 'core dumped')


def heads():
    from models.specs import Head
    return (Head('score', 'label', NUM_CLASSES),)


def synthetic_example(index, size):
    """Image and label of example `index`: class 1 where blue is high, 2 where red is
    high, 0 elsewhere, void in the first column. Deterministic; widths vary by index so
    that the nets reshape per image as the FCN data layers make them."""
    rng = np.random.default_rng(index)
    height, width = size, size + index % 3
    image = rng.uniform(-1, 1, (3, height, width)).astype(np.float32)
    label = np.zeros((1, height, width), np.uint8)
    label[0][image[0] > 0.3] = 1
    label[0][image[2] > 0.3] = 2
    label[0, :, 0] = 255
    return image, label


def _caffe_layer_base():
    import caffe
    return caffe.Layer


class SyntheticSegLayer(_caffe_layer_base()):
    """A data layer with the project's conventions (JSON param_str, `ids`, one example
    per forward, in order and wrapping unless randomised) and no files."""

    def setup(self, bottom, top):
        params = json.loads(self.param_str)
        self.size = params.get('size', 16)
        self.ids = [str(i) for i in range(params.get('images', 6))]
        self.random = (np.random.default_rng(params.get('seed', 1337))
                       if params.get('randomize') else None)
        self.position = 0

    def reshape(self, bottom, top):
        image, label = synthetic_example(int(self.ids[self.position]), self.size)
        top[0].reshape(1, *image.shape)
        top[1].reshape(1, *label.shape)
        self.example = image, label

    def forward(self, bottom, top):
        top[0].data[...], top[1].data[...] = self.example
        if self.random is not None:
            self.position = int(self.random.integers(len(self.ids)))
        else:
            self.position = (self.position + 1) % len(self.ids)

    def backward(self, top, propagate_down, bottom):
        pass


def tiny_fcn(python_param=None):
    """data -> conv (4 channels) -> pool (stride 2) -> 1x1 score -> bilinear 2x upsampling
    -> crop to the input -> loss: an FCN in five layers. Without a data layer's
    python_param, the deploy net: an input blob and no loss."""
    import caffe
    from caffe import layers as L, params as P
    learned = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]
    n = caffe.NetSpec()
    if python_param is None:
        n.data = L.Input(shape=dict(dim=[1, 3, 16, 16]))
    else:
        n.data, n.label = L.Python(ntop=2, python_param=python_param)
    n.conv1 = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1, param=learned,
                            weight_filler=dict(type='gaussian', std=0.1))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.score_fr = L.Convolution(n.pool1, num_output=NUM_CLASSES, kernel_size=1, param=learned,
                               weight_filler=dict(type='gaussian', std=0.1))
    n.upscore = L.Deconvolution(n.score_fr, param=[dict(lr_mult=0)], convolution_param=dict(
        num_output=NUM_CLASSES, kernel_size=4, stride=2, bias_term=False))
    n.score = L.Crop(n.upscore, n.data, crop_param=dict(axis=2, offset=1))
    if python_param is not None:
        n.loss = L.SoftmaxWithLoss(n.score, n.label,
                                   loss_param=dict(ignore_label=255, normalize=False))
    return n.to_proto()


def synthetic_param(split, images=6, size=16):
    params = dict(images=images, size=size, randomize=split == 'train', seed=1337)
    return dict(module='checks.stress', layer='SyntheticSegLayer', param_str=json.dumps(params))


def write_voc_set(folder, images=6, size=16):
    """A VOC-layout set of the synthetic examples (JPEG images, palette PNG labels)."""
    from PIL import Image
    from fcn import pictures
    folder = Path(folder)
    (folder / 'JPEGImages').mkdir(parents=True, exist_ok=True)
    (folder / 'ImageSets' / 'Segmentation').mkdir(parents=True, exist_ok=True)
    for index in range(images):
        image, label = synthetic_example(index, size)
        rgb = ((image.transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
        Image.fromarray(rgb).save(folder / 'JPEGImages' / f'{index}.jpg', quality=95)
        pictures.save_label_png(folder / 'SegmentationClass' / f'{index}.png', label[0])
    for split in ('train', 'val'):
        (folder / 'ImageSets' / 'Segmentation' / f'{split}.txt').write_text(
            ''.join(f'{i}\n' for i in range(images)))
    return folder


def voc_param(split, voc_dir, prefetch=False):
    params = dict(voc_dir=str(voc_dir), split=split, mean=[127.5, 127.5, 127.5],
                  randomize=split == 'train', seed=1337, prefetch=prefetch)
    return dict(module='layers.voc', layer='VOCSegDataLayer', param_str=json.dumps(params))


def write_model(folder, params=synthetic_param, max_iter=40, snapshot=10, base_lr=1e-3,
                val_images=6):
    """A model folder as `make models` writes them: train/val nets and a reference-style
    solver (net paths relative to the folder, Caffe's own testing off). `params(split)`
    gives the data layer's python_param."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'train.prototxt').write_text(str(tiny_fcn(params('train'))))
    (folder / 'val.prototxt').write_text(str(tiny_fcn(params('val'))))
    (folder / 'solver.prototxt').write_text(f'''train_net: "train.prototxt"
test_net: "val.prototxt"
test_iter: {val_images}
test_interval: 999999999
test_initialization: false
display: 100
average_loss: 20
lr_policy: "fixed"
base_lr: {base_lr}
momentum: 0.9
iter_size: 1
max_iter: {max_iter}
weight_decay: 0.0005
snapshot: {snapshot}
snapshot_prefix: "snapshot/train"
''')
    return folder / 'solver.prototxt'


# name -> (data layer, prefetch, base_lr, expected end). The voc images are 0..255 minus
# the mean, 127 times the synthetic ones, so the same summed loss needs a far smaller rate;
# the diverging run's rate makes the weights NaN within a few dozen iterations.
RUNS = {
    'synthetic': ('synthetic', False, 1e-3, 'finished'),
    'voc': ('voc', False, 1e-6, 'finished'),
    'voc-prefetch': ('voc', True, 1e-6, 'finished'),
    'diverging': ('voc', False, 1e-2, 'diverged'),
}


def child(run_dir, run, iterations):
    """One long run in this process, ended by a plain interpreter exit."""
    import caffe
    from fcn.training import start, trainer
    caffe.set_mode_cpu()
    data, prefetch, base_lr, _ = RUNS[run]
    run_dir = Path(run_dir).resolve()  # the layer reads relative data folders elsewhere
    if data == 'voc':
        voc_dir = write_voc_set(run_dir / 'voc')
        params = lambda split: voc_param(split, voc_dir, prefetch)  # noqa: E731
    else:
        params = synthetic_param
    solver = write_model(run_dir / 'model', params, max_iter=iterations,
                         snapshot=max(iterations // 4, 1), base_lr=base_lr)
    training = trainer.TrainingRun(name='stress', solver=solver, run_dir=run_dir / 'run',
                                   heads=heads())
    return start.launch(training)


def run_one(run_dir, run, iterations):
    """Run `child` in a fresh interpreter: (exit code, seconds, what ended it, the lines
    that tell of a crash)."""
    command = [sys.executable, '-m', 'checks.stress', '--child', str(run_dir),
               '--runs', run, '--iterations', str(iterations)]
    env = dict(os.environ, GLOG_minloglevel=os.environ.get('GLOG_minloglevel', '2'))
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - start
    output = result.stdout + result.stderr
    crashes = [line for line in output.splitlines() if any(s in line for s in CRASH_SIGNS)]
    if result.returncode == 0:
        ended = 'finished'
    elif result.returncode == 1 and 'training diverged' in output:
        ended = 'diverged'
    else:
        ended = f'failed: {output.splitlines()[-1] if output else "no output"}'
    return result.returncode, seconds, ended, crashes


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--iterations', type=int, default=3000,
                        help='training iterations per run (default 3000)')
    parser.add_argument('--runs', nargs='+', choices=RUNS, default=list(RUNS),
                        help='which runs (default: all)')
    parser.add_argument('--work-dir', type=Path, default=Path('runs/stress'),
                        help='where the runs write (default runs/stress)')
    parser.add_argument('--child', type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.runs[0], args.iterations)
    failures = 0
    for run in args.runs:
        expected = RUNS[run][3]
        print(f'stress: {run}: up to {args.iterations} iterations in a fresh process, '
              f'expected to end {expected} ...', flush=True)
        code, seconds, ended, crashes = run_one(args.work_dir / run, run, args.iterations)
        verdict = 'ok' if ended == expected and not crashes else 'FAILED'
        print(f'stress: {run}: {ended} (exit {code}) after {seconds:.0f} s: {verdict}',
              flush=True)
        for line in crashes:
            print(f'    {line}')
        failures += verdict != 'ok'
    return 1 if failures else 0


if __name__ == '__main__':
    run_command(main)
