#!/usr/bin/env python3
"""The report of `make demo`: the whole FCN method on the embedded toy set, in pictures.

`make demo` trains with the project's own pipeline rules, nothing else: the toy VGG16
classifier (toy-vgg16) from scratch on the classification view, surgery into FCN base
weights (weights/toy-vgg16-fcn.caffemodel), then toy-fcn32s -> toy-fcn16s -> toy-fcn8s,
each from the previous stage's final weights, each scored on the val split by score.py
(runs/<model>/score.json). This script gathers what they left into runs/demo/:

  scores.json     {"fcn32s": {metrics}, "fcn16s": ..., "fcn8s": ...}, the score.py metrics
                  (pixel_acc, mean_acc, mean_iu, fwavacc, per_class_iu, n_images)
  summary.md      a table of the metrics and the training time of every stage
  training.png    training loss of every stage on one iteration axis, and val scores
  predictions.png val images, ground truth and the three nets' predictions side by side

  demo.py [--runs-dir runs] [--out runs/demo] [--images 8] [--data-dir D] [--cpu|--gpu N]
"""
import argparse
import json
import os
from pathlib import Path

from fcn import nets, pictures, reports
from fcn.errors import UsageError, run_command
from fcn.reports import demo

def main(argv=None):
    from fcn.runtime import devices
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    reports.add_folder_options(parser, 'where the toy stages were trained',
                               'report folder (default: RUNS_DIR/demo)')
    parser.add_argument('--images', type=int, default=8,
                        help='val images on the prediction sheet (default 8)')
    devices.add_device_args(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault('GLOG_minloglevel', '2')
    if args.images < 1:
        raise UsageError(f'--images {args.images}: give at least 1')
    nets.set_data_dir(args.data_dir)
    from fcn.paths import data_root
    out = args.out or args.runs_dir / 'demo'
    scores = demo.collect_scores(args.runs_dir)
    devices.select_device(args)
    demo.plot_training(args.runs_dir, out / 'training.png')
    demo.prediction_sheet(args.runs_dir, data_root() / 'toy', out / 'predictions.png', args.images)
    table = demo.summary_table(scores, args.runs_dir)
    pictures.atomic_save(out / 'summary.md', lambda tmp: Path(tmp).write_text(table))
    pictures.atomic_save(out / 'scores.json',
                    lambda tmp: Path(tmp).write_text(json.dumps(scores, indent=1) + '\n'))
    print(table, end='')
    print(f'wrote {out}/scores.json, summary.md, training.png, predictions.png')


if __name__ == '__main__':
    run_command(main)
