"""Scoring as the FCN papers define it (solve/score.py is the command).

One confusion matrix per head, then pixel accuracy, mean accuracy, mean IU and
frequency-weighted IU from it. A split can be scored in contiguous shards whose matrices
are saved and summed (`save_hist`, `merge_hists`) to the same result as the whole.
Classes with neither ground truth nor predictions leave the means, as in the reference;
`ignore_absent` also leaves out classes with predictions but no ground truth pixels,
which the reference counted as 0 (SIFT Flow's semantic head).
"""
import argparse
import json
from pathlib import Path

import numpy as np

from fcn.runtime import threads
from fcn import pictures
from fcn.progress import Progress
from fcn.nets import UsageError

METRIC_KEYS = ('pixel_acc', 'mean_acc', 'mean_iu', 'fwavacc', 'per_class_iu', 'n_images')


class ConfusionMatrix:
    """Pixel counts: rows are ground truth classes, columns predicted classes.

    Ground truth outside 0..K-1 (void is 255) is not counted.
    """

    def __init__(self, num_classes, hist=None, n_images=0):
        self.num_classes = int(num_classes)
        shape = (self.num_classes, self.num_classes)
        self.hist = np.zeros(shape, np.int64) if hist is None else np.asarray(hist, np.int64)
        if self.hist.shape != shape:
            raise ValueError(f'a histogram for {num_classes} classes must be {shape}, '
                             f'not {self.hist.shape}')
        self.n_images = int(n_images)

    def add(self, gt, pred):
        """Count one image's pixels."""
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.shape != pred.shape:
            raise ValueError(f'ground truth {gt.shape} and prediction {pred.shape} differ '
                             f'in shape')
        n = self.num_classes
        counted = (gt >= 0) & (gt < n)
        gt, pred = gt[counted].astype(np.int64), pred[counted].astype(np.int64)
        if pred.size and (pred.min() < 0 or pred.max() >= n):
            raise ValueError(f'predictions must be class ids 0..{n - 1}, found '
                             f'{pred.min()}..{pred.max()}')
        self.hist += np.bincount(n * gt + pred, minlength=n * n).reshape(n, n)
        self.n_images += 1

    def __iadd__(self, other):
        if other.num_classes != self.num_classes:
            raise ValueError(f'cannot merge {other.num_classes}-class counts into '
                             f'{self.num_classes}-class counts')
        self.hist += other.hist
        self.n_images += other.n_images
        return self

    def metrics(self, class_names=None, ignore_absent=False):
        """The four FCN metrics and the per-class IU (None where undefined)."""
        hist = self.hist.astype(np.float64)
        names = class_names or [f'class {i}' for i in range(self.num_classes)]
        total = hist.sum()
        hits = np.diag(hist)
        gt_pixels = hist.sum(1)
        union = gt_pixels + hist.sum(0) - hits
        with np.errstate(divide='ignore', invalid='ignore'):
            class_acc = hits / gt_pixels
            iu = hits / union
        if ignore_absent:
            iu[gt_pixels == 0] = np.nan
        present = gt_pixels > 0
        return {
            'pixel_acc': _number(hits.sum() / total if total else np.nan),
            'mean_acc': _nanmean(class_acc),
            'mean_iu': _nanmean(iu),
            'fwavacc': _number((gt_pixels[present] / total * iu[present]).sum()
                               if total else np.nan),
            'per_class_iu': {name: _number(value) for name, value in zip(names, iu)},
            'n_images': self.n_images,
        }


def _number(value):
    """JSON has no NaN: undefined metrics are None."""
    return None if np.isnan(value) else float(value)


def _nanmean(values):
    return _number(np.nanmean(values)) if np.isfinite(values).any() else None


def shard_range(count, shard):
    """The contiguous block [start, stop) of `count` items that shard (i, n) scores."""
    index, shards = shard
    return count * index // shards, count * (index + 1) // shards


def parse_shard(text):
    try:
        index, shards = (int(part) for part in text.split('/'))
    except ValueError:
        index, shards = -1, 0
    if not 0 <= index < shards:
        raise argparse.ArgumentTypeError(f'{text!r} is not a shard i/n with 0 <= i < n')
    return index, shards


def data_layer_count(net):
    """How many leading layers are data layers (no bottoms); forwarding them advances."""
    count = 0
    while count < len(net.layers) and not list(net._bottom_ids(count)):
        count += 1
    return count


def score_net(net, heads, image_ids, shard=(0, 1), save_dir=None, label='score', limit=None,
              runtime=None):
    """Forward `net` over its split and count every head's predictions; with `runtime`
    (fcn.runtimes: OpenCV, ONNX Runtime) the net runs only its data layers and the runtime
    computes the scores from the data tops of its inputs' names.

    Scores are (batch, classes, ...) and labels (batch, 1, ...) or (batch,): a
    segmentation net gives a label map per image, a classifier one label per example.
    The data layer walks the split in order and wraps, so the forward passes outside this
    shard's block run the data layers alone: the reader ends where it began and the next
    pass (the next validation during training) sees the same examples. `limit` scores only
    the split's first examples (quick looks), shared among the shards as a whole split is.
    Returns {head.label: ConfusionMatrix}.
    """
    batch = net.blobs[heads[0].label].data.shape[0]
    passes = -(-len(image_ids) // batch)
    scored = len(image_ids) if limit is None else min(limit, len(image_ids))
    start, stop = shard_range(-(-scored // batch), shard)
    end = min(scored, stop * batch)
    last_data_layer = data_layer_count(net) - 1
    for _ in range(start):
        net._forward(0, last_data_layer)
    hists = {head.label: ConfusionMatrix(head.num_classes) for head in heads}
    progress = Progress(label, end - start * batch)
    for first in range(start * batch, end, batch):
        threads.adapt()
        if runtime is None:
            net.forward()
            scores = {head.score: net.blobs[head.score].data for head in heads}
        else:
            net._forward(0, last_data_layer)
            scores = runtime.forward({name: net.blobs[name].data for name in runtime.inputs})
        count = min(batch, end - first)
        for head in heads:
            pred = scores[head.score].argmax(1)
            gt = net.blobs[head.label].data.reshape(pred.shape)
            for b in range(count):
                hists[head.label].add(gt[b], pred[b])
                if save_dir is not None and pred.ndim == 3:
                    folder = Path(save_dir) / head.label if len(heads) > 1 else Path(save_dir)
                    pictures.save_label_png(folder / f'{image_ids[first + b]}.png', pred[b])
        for _ in range(count):
            progress.update()
    for _ in range(stop, passes):
        net._forward(0, last_data_layer)
    return hists


def results(hists, names, ignore_absent):
    """{label: metrics} for every head's confusion matrix."""
    return {label: hist.metrics(names[label], ignore_absent[label])
            for label, hist in hists.items()}


def report_json(hists, names, ignore_absent, extra=None):
    """The JSON document: one head's metrics at the top level, several heads by label.

    Each head's entry carries its metrics, class names and confusion matrix.
    """
    heads = {}
    for label, metrics in results(hists, names, ignore_absent).items():
        heads[label] = dict(metrics, class_names=list(names[label]),
                            ignore_absent=bool(ignore_absent[label]),
                            confusion=hists[label].hist.tolist())
    document = next(iter(heads.values())) if len(heads) == 1 else dict(heads)
    return dict(extra or {}, **document)


def write_outputs(json_path, hists, names, ignore_absent, extra=None):
    """The JSON report and one confusion PNG per head next to it."""
    json_path = Path(json_path)
    document = report_json(hists, names, ignore_absent, extra)
    pictures.atomic_save(json_path,
                         lambda tmp: Path(tmp).write_text(json.dumps(document, indent=1)))
    for label, hist in hists.items():
        suffix = '' if len(hists) == 1 else f'-{label}'
        pictures.save_confusion_png(json_path.with_name(f'{json_path.stem}-confusion{suffix}.png'),
                               hist.hist, names[label])
    return document


def save_hist(path, hists, names, ignore_absent, shard):
    """A shard's histograms with what a merge needs to check and to report."""
    meta = {'shard': list(shard), 'heads': [
        {'label': label, 'class_names': list(names[label]),
         'ignore_absent': bool(ignore_absent[label]), 'n_images': hist.n_images}
        for label, hist in hists.items()]}
    arrays = {f'hist_{label}': hist.hist for label, hist in hists.items()}

    def write(tmp):
        with open(tmp, 'wb') as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, meta=json.dumps(meta), **arrays)
    pictures.atomic_save(path, write)


def load_hist(path):
    with np.load(path) as f:
        meta = json.loads(str(f['meta']))
        hists = {head['label']: ConfusionMatrix(len(head['class_names']),
                                                f[f'hist_{head["label"]}'], head['n_images'])
                 for head in meta['heads']}
    names = {head['label']: tuple(head['class_names']) for head in meta['heads']}
    ignore = {head['label']: head['ignore_absent'] for head in meta['heads']}
    return tuple(meta['shard']), hists, names, ignore


def merge_hists(paths):
    """Sum the shards of one split; every shard i/n must be present exactly once."""
    merged, names, ignore, seen = None, None, None, {}
    for path in paths:
        shard, hists, shard_names, shard_ignore = load_hist(path)
        if shard in seen:
            raise UsageError(f'{path} and {seen[shard]} are both shard {shard[0]}/{shard[1]}')
        seen[shard] = path
        if merged is None:
            merged, names, ignore = hists, shard_names, shard_ignore
            continue
        if shard_names != names:
            raise UsageError(f'{path} scores other labels or classes than {paths[0]}')
        for label, hist in hists.items():
            merged[label] += hist
    counts = {n for _, n in seen}
    indices = sorted(i for i, _ in seen)
    if len(counts) != 1 or indices != list(range(counts.pop())):
        missing = ', '.join(f'{i}/{n}' for i, n in sorted(seen))
        raise UsageError(f'the shards do not make one whole split (have {missing})')
    return merged, names, ignore


def score_pred_dir(pred_dir, gt_dir, num_classes, shard=(0, 1)):
    """Count saved prediction PNGs against the label PNGs of the same names."""
    gt_paths = sorted(Path(gt_dir).glob('*.png'))
    if not gt_paths:
        raise UsageError(f'--gt-dir {gt_dir}: no label PNGs found')
    start, stop = shard_range(len(gt_paths), shard)
    hist = ConfusionMatrix(num_classes)
    progress = Progress('score', stop - start)
    for gt_path in gt_paths[start:stop]:
        pred_path = Path(pred_dir) / gt_path.name
        if not pred_path.is_file():
            raise UsageError(f'no prediction {pred_path} for the label {gt_path}')
        gt, pred = pictures.read_label_png(gt_path), pictures.read_label_png(pred_path)
        try:
            hist.add(gt, pred)
        except ValueError as e:
            raise UsageError(f'{pred_path}: {e}') from e
        progress.update()
    return hist
