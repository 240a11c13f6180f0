"""Made-up scored runs for the results page: a VOC-layout split of coloured shapes (JPEG
images, palette label PNGs with void borders) under a data root, and for each model a run
folder as scoring leaves it (score.json, score-images.npz, predictions/), its predictions
the ground truth with a share of its pixels given another class, the share shrinking
down the list of models, so the last model is the best (as FCN-8s is of 32s, 16s, 8s).
Shared by the tests and by the timing below.

  python -m checks.page_runs DIR [--images 1449] [--size 500x375]
      writes DIR/data and DIR/runs (voc-fcn32s, 16s, 8s), builds DIR/runs/page twice
      (rendering, then reusing) and prints the times and the page's size on disk
"""
import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fcn import evaluation, nets, pictures, prototxt, runs

VOID = 255


def voc_dir(model, data_root):
    """The VOC-layout folder the model's val data layer reads, under `data_root`."""
    layer, = prototxt.data_layers(prototxt.read_net(nets.model_file(model, 'val')))
    return Path(data_root) / json.loads(layer.python_param.param_str)['voc_dir']


def example(rng, size, num_classes):
    """(RGB image, label map): a background and a few filled rectangles of random classes,
    each object drawn in its class's palette colour with noise, void along its edges."""
    width, height = size
    label = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(1, 4)):
        x0, y0 = rng.integers(0, width * 3 // 4), rng.integers(0, height * 3 // 4)
        x1 = min(width, x0 + rng.integers(width // 8, width // 2))
        y1 = min(height, y0 + rng.integers(height // 8, height // 2))
        label[y0:y1, x0:x1] = rng.integers(1, num_classes)
        label[y0:y1, [x0, x1 - 1]] = VOID
        label[[y0, y1 - 1], x0:x1] = VOID
    colours = pictures.PALETTE[np.where(label == VOID, 0, label)].astype(np.int16)
    noise = rng.integers(-20, 21, colours.shape)
    return np.clip(colours + noise + 30, 0, 255).astype(np.uint8), label


def prediction(rng, label, num_classes, error):
    """The label with about `error` of its pixels, in blocks of 8 x 8 as a net's coarse
    mistakes, given a wrong class, and void predicted as background."""
    pred = np.where(label == VOID, 0, label)
    wrong = np.kron(rng.random((label.shape[0] // 8 + 1, label.shape[1] // 8 + 1)) < error,
                    np.ones((8, 8), bool))[:label.shape[0], :label.shape[1]]
    pred[wrong] = (pred[wrong] + 1 + rng.integers(0, num_classes - 1)) % num_classes
    return pred.astype(np.uint8)


def write_split(folder, split, count, size, num_classes, seed=0):
    """A VOC-layout split of `count` images; returns {id: label map}."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / 'ImageSets' / 'Segmentation').mkdir(parents=True, exist_ok=True)
    (folder / 'JPEGImages').mkdir(exist_ok=True)
    labels = {}
    for index in range(count):
        image_id = f'{2008 + index % 4}_{index:06d}'
        rgb, label = example(rng, size, num_classes)
        Image.fromarray(rgb).save(folder / 'JPEGImages' / f'{image_id}.jpg', quality=90)
        pictures.save_label_png(folder / 'SegmentationClass' / f'{image_id}.png', label)
        labels[image_id] = label
    (folder / 'ImageSets' / 'Segmentation' / f'{split}.txt').write_text(
        '\n'.join(labels) + '\n')
    return labels


def write_run(folder, model, split, labels, class_names, error, seed):
    """A run folder as scoring leaves it: predictions, score.json and its per-image counts."""
    rng = np.random.default_rng(seed)
    run = runs.RunFolder(folder, model)
    hist = evaluation.ConfusionMatrix(len(class_names))
    for image_id, label in labels.items():
        pred = prediction(rng, label, len(class_names), error)
        pictures.save_label_png(run.predictions() / f'{image_id}.png', pred)
        hist.add(label, pred, image_id)
    evaluation.write_outputs(run.score(), {'label': hist}, {'label': class_names},
                             {'label': False}, {'model': model, 'split': split,
                                                'weights': str(run.final_weights)})
    return run


def write_fixture(root, models, count, size, errors=None):
    """DIR/data (one split, shared by the models, which must read the same VOC folder) and
    DIR/runs/MODEL for each model. Returns (data root, runs folder)."""
    root = Path(root)
    spec = nets.model_spec(models[0])
    head = spec.heads[0]
    names = nets.class_names(spec, head)
    labels = write_split(voc_dir(models[0], root / 'data'), spec.val_split, count, size,
                         head.num_classes)
    errors = errors or [0.05 + 0.1 * i for i in reversed(range(len(models)))]
    for index, (model, error) in enumerate(zip(models, errors)):
        write_run(root / 'runs' / model, model, spec.val_split, labels, names, error, index)
    return root / 'data', root / 'runs'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('dir', type=Path)
    parser.add_argument('--images', type=int, default=1449)
    parser.add_argument('--size', default='500x375', help='WIDTHxHEIGHT')
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split('x'))
    started = time.perf_counter()
    data, runs_dir = write_fixture(args.dir, ['voc-fcn32s', 'voc-fcn16s', 'voc-fcn8s'],
                                   args.images, size)
    print(f'fixture: {args.images} images of {args.size}, 3 runs, '
          f'{time.perf_counter() - started:.1f} s')
    os.environ['FCN_DATA_DIR'] = str(data)
    from fcn.reports import page
    for attempt in ('first build', 'second build'):
        started = time.perf_counter()
        index, _, counts = page.build(runs_dir)
        print(f'{attempt}: {time.perf_counter() - started:.1f} s, {counts["rendered"]} files '
              f'rendered, {counts["reused"]} reused')
    print(f'{index}: {page.disk_use(index.parent) / 2 ** 20:.1f} MiB on disk')


if __name__ == '__main__':
    main()
