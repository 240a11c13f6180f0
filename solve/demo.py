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
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import infer
import netfiles
import viz
from netfiles import UsageError

CLASSIFIER = 'toy-vgg16'
# The keys of scores.json and the models they come from, coarse to fine.
STAGES = (('fcn32s', 'toy-fcn32s'), ('fcn16s', 'toy-fcn16s'), ('fcn8s', 'toy-fcn8s'))
METRICS = ('pixel_acc', 'mean_acc', 'mean_iu', 'fwavacc', 'per_class_iu', 'n_images')
SHEET_ZOOM = 2


def read_json(path, hint):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f'{path} does not exist: {hint}') from None


def collect_scores(runs_dir):
    """scores.json's content from each stage's score.py report."""
    scores = {}
    for key, model in STAGES:
        report = read_json(Path(runs_dir) / model / 'score.json',
                           f'train and score {model} first (`make {model}`)')
        scores[key] = {metric: report[metric] for metric in METRICS}
    return scores


def read_train_log(run_dir):
    """(iterations, losses, seconds) of a stage's train_log.csv, or None without one."""
    path = Path(run_dir) / 'train_log.csv'
    if not path.is_file():
        return None
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    return (np.array([int(r['iteration']) for r in rows]),
            np.array([float(r['loss']) for r in rows]), float(rows[-1]['seconds']))


def read_validations(run_dir):
    path = Path(run_dir) / 'val_log.json'
    return json.loads(path.read_text()) if path.is_file() else []


def smooth(values, window):
    if len(values) < window:
        return values
    return np.convolve(values, np.ones(window) / window, mode='valid')


def plot_training(runs_dir, path):
    """Three panels: the classifier's loss; the FCN stages' losses, each stage starting
    where the previous one ended; the validation scores of every stage."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (cls_ax, fcn_ax, val_ax) = plt.subplots(1, 3, figsize=(15, 4), dpi=100)
    log = read_train_log(Path(runs_dir) / CLASSIFIER)
    if log is not None:
        iterations, losses, _ = log
        window = max(1, len(losses) // 40)
        cls_ax.plot(iterations[window - 1:], smooth(losses, window))
    cls_ax.set(title=f'{CLASSIFIER}: classifier pretraining', xlabel='iteration',
               ylabel='softmax loss (mean of a batch)')
    offset = 0
    for key, model in STAGES:
        log = read_train_log(Path(runs_dir) / model)
        if log is None:
            continue
        iterations, losses, _ = log
        window = max(1, len(losses) // 40)
        fcn_ax.plot(offset + iterations[window - 1:], smooth(losses, window), label=key)
        validations = read_validations(Path(runs_dir) / model)
        if validations:
            val_ax.plot([offset + v['iteration'] for v in validations],
                        [v['label']['mean_iu'] for v in validations], marker='o', label=key)
        offset += iterations[-1]
    fcn_ax.set(title='FCN stages (each from the previous)', xlabel='iteration (all stages)',
               ylabel='loss per image')
    val_ax.set(title='val mean IU', xlabel='iteration (all stages)', ylabel='mean IU')
    for ax in (cls_ax, fcn_ax, val_ax):
        ax.grid(True, alpha=0.3)
    for ax in (fcn_ax, val_ax):
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    viz.atomic_save(path, lambda tmp: fig.savefig(tmp, format='png'))
    plt.close(fig)


def labelled_tile(rgb, title):
    """An image zoomed for viewing, with a title strip above it."""
    zoomed = Image.fromarray(rgb).resize((rgb.shape[1] * SHEET_ZOOM, rgb.shape[0] * SHEET_ZOOM),
                                         Image.NEAREST)
    tile = Image.new('RGB', (zoomed.width, zoomed.height + 14), 'white')
    tile.paste(zoomed, (0, 14))
    ImageDraw.Draw(tile).text((2, 1), title, fill='black')
    return np.asarray(tile)


def prediction_sheet(runs_dir, toy_dir, path, count):
    """Rows of val images: image, ground truth, FCN-32s, FCN-16s, FCN-8s (VOC palette)."""
    ids = (Path(toy_dir) / 'ImageSets' / 'Segmentation' / 'val.txt').read_text().split()[:count]
    nets = []
    for key, model in STAGES:
        spec = netfiles.model_spec(model)
        net = netfiles.load_net(netfiles.model_file(model, 'deploy'),
                                Path(runs_dir) / model / 'final.caffemodel')
        nets.append((key, spec, net, infer.single_input(net, model), infer.input_mean(spec)))
    rows = []
    for image_id in ids:
        rgb = infer.read_rgb(Path(toy_dir) / 'JPEGImages' / f'{image_id}.jpg')
        truth = viz.read_label_png(Path(toy_dir) / 'SegmentationClass' / f'{image_id}.png')
        tiles = [labelled_tile(rgb, image_id), labelled_tile(viz.PALETTE[truth], 'ground truth')]
        for key, spec, net, input_name, mean in nets:
            scores, = infer.segment(net, input_name, rgb, mean, spec.heads).values()
            tiles.append(labelled_tile(viz.PALETTE[scores.argmax(0)], key))
        rows.append(np.concatenate(tiles, axis=1))
    viz.save_rgb_png(path, np.concatenate(rows, axis=0))


def summary_table(scores, runs_dir):
    """Markdown: every stage's metrics (%) and training time, and the classifier's."""
    lines = ['| net | pixel acc | mean acc | mean IU | f.w. IU | training (s) |',
             '|---|---|---|---|---|---|']
    classifier = read_validations(Path(runs_dir) / CLASSIFIER)
    log = read_train_log(Path(runs_dir) / CLASSIFIER)
    if classifier and log:
        accuracy = classifier[-1]['label']['pixel_acc']
        lines.append(f'| {CLASSIFIER} (classifier) | accuracy {100 * accuracy:.1f} | | | '
                     f'| {log[2]:.0f} |')
    for key, model in STAGES:
        metrics, log = scores[key], read_train_log(Path(runs_dir) / model)
        seconds = f'{log[2]:.0f}' if log else '?'
        lines.append(f'| {key} | ' + ' | '.join(
            f'{100 * metrics[m]:.1f}' for m in ('pixel_acc', 'mean_acc', 'mean_iu', 'fwavacc'))
            + f' | {seconds} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    import devices
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs-dir', type=Path, default=netfiles.RUNS_DIR,
                        help='where the toy stages were trained (default: runs/)')
    parser.add_argument('--out', type=Path, help='report folder (default: RUNS_DIR/demo)')
    parser.add_argument('--images', type=int, default=8,
                        help='val images on the prediction sheet (default 8)')
    parser.add_argument('--data-dir', help='data root (default: $FCN_DATA_DIR or data/)')
    devices.add_device_args(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault('GLOG_minloglevel', '2')
    if args.images < 1:
        raise UsageError(f'--images {args.images}: give at least 1')
    netfiles.set_data_dir(args.data_dir)
    from data import data_root
    out = args.out or args.runs_dir / 'demo'
    scores = collect_scores(args.runs_dir)
    devices.select_device(args)
    plot_training(args.runs_dir, out / 'training.png')
    prediction_sheet(args.runs_dir, data_root() / 'toy', out / 'predictions.png', args.images)
    table = summary_table(scores, args.runs_dir)
    viz.atomic_save(out / 'summary.md', lambda tmp: Path(tmp).write_text(table))
    viz.atomic_save(out / 'scores.json',
                    lambda tmp: Path(tmp).write_text(json.dumps(scores, indent=1) + '\n'))
    print(table, end='')
    print(f'wrote {out}/scores.json, summary.md, training.png, predictions.png')


if __name__ == '__main__':
    sys.exit(main())
