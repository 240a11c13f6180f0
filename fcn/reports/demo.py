"""The demo's report: the toy stages' scores, training curves and a sheet of val
predictions, gathered from their run folders (solve/demo_report.py writes them)."""
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fcn import inference, nets, pictures, runs, runtimes
from fcn.nets import UsageError

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
        report = read_json(runs.run_folder(model, runs_dir).score(),
                           f'train and score {model} first (`make {model}`)')
        scores[key] = {metric: report[metric] for metric in METRICS}
    return scores


def read_train_log(run_dir):
    """(iterations, losses, seconds) of a stage's train_log.csv, or None without one."""
    path = runs.RunFolder(run_dir).train_log
    if not path.is_file():
        return None
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    return (np.array([int(r['iteration']) for r in rows]),
            np.array([float(r['loss']) for r in rows]), float(rows[-1]['seconds']))


def read_validations(run_dir):
    return runs.RunFolder(run_dir).validations()


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
    pictures.atomic_save(path, lambda tmp: fig.savefig(tmp, format='png'))
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
    fcns = []
    for key, model in STAGES:
        spec = nets.model_spec(model)
        net = runtimes.CaffeRuntime(nets.load_net(nets.model_file(model, 'deploy'),
                                                  runs.run_folder(model, runs_dir).final_weights))
        fcns.append((key, spec, net, inference.single_input(net, model),
                     inference.input_mean(spec)))
    rows = []
    for image_id in ids:
        rgb = inference.read_rgb(Path(toy_dir) / 'JPEGImages' / f'{image_id}.jpg')
        truth = pictures.read_label_png(Path(toy_dir) / 'SegmentationClass' / f'{image_id}.png')
        tiles = [labelled_tile(rgb, image_id),
                 labelled_tile(pictures.PALETTE[truth], 'ground truth')]
        for key, spec, net, input_name, mean in fcns:
            scores, = inference.segment(net, input_name, rgb, mean, spec.heads).values()
            tiles.append(labelled_tile(pictures.PALETTE[scores.argmax(0)], key))
        rows.append(np.concatenate(tiles, axis=1))
    pictures.save_rgb_png(path, np.concatenate(rows, axis=0))


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
