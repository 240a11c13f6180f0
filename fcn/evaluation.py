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
from fcn import pictures, runs
from fcn.progress import Progress
from fcn.nets import UsageError

METRIC_KEYS = ('pixel_acc', 'mean_acc', 'mean_iu', 'fwavacc', 'per_class_iu', 'n_images')


class ImageCounts:
    """Per image, per class: the pixels both labelled and predicted as the class
    (intersection), labelled as it (ground truth) and predicted as it (prediction), over
    the counted pixels. One row of `counts` (images x 3 x classes) per image, in the order
    the images were counted; `ids` names them."""

    INTERSECTION, GROUND_TRUTH, PREDICTION = range(3)

    def __init__(self, num_classes, ids=(), counts=None):
        self.num_classes = int(num_classes)
        self.ids = [str(i) for i in ids]
        shape = (len(self.ids), 3, self.num_classes)
        self.counts = np.zeros(shape, np.int64) if counts is None else \
            np.asarray(counts, np.int64)
        if self.counts.shape != shape:
            raise ValueError(f'per-image counts of {len(self.ids)} images and '
                             f'{num_classes} classes must be {shape}, not {self.counts.shape}')
        self._rows = []  # rows added since counts was last built

    def add(self, image_id, hist):
        """Record one image from its own confusion matrix."""
        self.ids.append(str(image_id))
        self._rows.append(np.stack([np.diag(hist), hist.sum(1), hist.sum(0)]))

    def __iadd__(self, other):
        if other.num_classes != self.num_classes:
            raise ValueError(f'cannot merge {other.num_classes}-class per-image counts into '
                             f'{self.num_classes}-class counts')
        self.ids += other.ids
        self._rows.append(other.table())
        return self

    def table(self):
        """The counts as one (images, 3, classes) array."""
        if self._rows:
            rows = [r[np.newaxis] if r.ndim == 2 else r for r in self._rows]
            self.counts = np.concatenate([self.counts] + rows)
            self._rows = []
        return self.counts

    def metrics(self):
        """Per image: pixel accuracy and mean IU over the classes in its ground truth or
        its prediction (NaN where an image has no counted pixel)."""
        return image_metrics(self.table())


def image_metrics(counts):
    """(pixel accuracy, mean IU) per image of an (images, 3, classes) count table: the
    accuracy over the image's counted pixels, the mean IU over the classes present in its
    ground truth or its prediction, as the split's mean IU leaves out classes absent from
    both. NaN where an image has no counted pixel."""
    counts = np.asarray(counts, np.float64)
    hits, gt, pred = counts[:, 0], counts[:, 1], counts[:, 2]
    union = gt + pred - hits
    with np.errstate(divide='ignore', invalid='ignore'):
        pixel_acc = hits.sum(1) / gt.sum(1)
        iu = np.where(union > 0, hits / union, 0.0)
        mean_iu = iu.sum(1) / (union > 0).sum(1)
    return pixel_acc, mean_iu


class ConfusionMatrix:
    """Pixel counts: rows are ground truth classes, columns predicted classes; `images`
    the same counts image by image (ImageCounts; None for counts loaded without them).

    Ground truth outside 0..K-1 (void is 255) is not counted.
    """

    def __init__(self, num_classes, hist=None, n_images=0, images=None):
        self.num_classes = int(num_classes)
        shape = (self.num_classes, self.num_classes)
        self.hist = np.zeros(shape, np.int64) if hist is None else np.asarray(hist, np.int64)
        if self.hist.shape != shape:
            raise ValueError(f'a histogram for {num_classes} classes must be {shape}, '
                             f'not {self.hist.shape}')
        self.n_images = int(n_images)
        if images is None and hist is None:
            images = ImageCounts(self.num_classes)
        if images is not None and len(images.ids) != self.n_images:
            raise ValueError(f'per-image counts of {len(images.ids)} images for a matrix of '
                             f'{self.n_images}')
        self.images = images

    def add(self, gt, pred, image_id=None):
        """Count one image's pixels (`image_id` names it in the per-image counts; default:
        its number)."""
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
        image = np.bincount(n * gt + pred, minlength=n * n).reshape(n, n)
        self.hist += image
        if self.images is not None:
            self.images.add(self.n_images if image_id is None else image_id, image)
        self.n_images += 1

    def __iadd__(self, other):
        if other.num_classes != self.num_classes:
            raise ValueError(f'cannot merge {other.num_classes}-class counts into '
                             f'{self.num_classes}-class counts')
        self.hist += other.hist
        self.n_images += other.n_images
        if self.images is None or other.images is None:
            self.images = None
        else:
            self.images += other.images
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
                hists[head.label].add(gt[b], pred[b], image_ids[first + b])
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
    """The JSON report, its per-image counts (runs.image_counts_file: written first, so a
    report is never newer than them; an old file is removed where the counts are
    unknown) and one confusion PNG per head next to it."""
    json_path = Path(json_path)
    document = report_json(hists, names, ignore_absent, extra)
    images_path = runs.image_counts_file(json_path)
    if all(hist.images is not None for hist in hists.values()):
        save_image_counts(images_path, hists, names)
    else:
        images_path.unlink(missing_ok=True)
    pictures.atomic_save(json_path,
                         lambda tmp: Path(tmp).write_text(json.dumps(document, indent=1)))
    for label, hist in hists.items():
        suffix = '' if len(hists) == 1 else f'-{label}'
        pictures.save_confusion_png(json_path.with_name(f'{json_path.stem}-confusion{suffix}.png'),
                               hist.hist, names[label])
    return document


def _image_arrays(hists):
    """The per-image ids and counts of every head that has them, as npz arrays."""
    arrays = {}
    for label, hist in hists.items():
        if hist.images is not None:
            arrays[f'ids_{label}'] = np.array(hist.images.ids, dtype=str)
            arrays[f'counts_{label}'] = hist.images.table()
    return arrays


def _write_npz(path, compressed=False, **arrays):
    def write(tmp):
        with open(tmp, 'wb') as f:  # a file object: np.savez would append .npz to a name
            (np.savez_compressed if compressed else np.savez)(f, **arrays)
    pictures.atomic_save(path, write)


def save_image_counts(path, hists, names):
    """Every head's per-image counts (ImageCounts) in one npz: `meta` (JSON: the heads'
    labels and class names), and per head `ids_LABEL` (image ids) and `counts_LABEL`
    (images x [intersection, ground truth, prediction] x classes pixel counts)."""
    meta = {'heads': [{'label': label, 'class_names': list(names[label])} for label in hists]}
    _write_npz(path, compressed=True, meta=json.dumps(meta), **_image_arrays(hists))


def load_image_counts(path):
    """{label: (class names, ImageCounts)} of a file save_image_counts wrote."""
    with np.load(path) as f:
        meta = json.loads(str(f['meta']))
        return {head['label']: (tuple(head['class_names']),
                                ImageCounts(len(head['class_names']),
                                            f[f'ids_{head["label"]}'].tolist(),
                                            f[f'counts_{head["label"]}']))
                for head in meta['heads']}


def save_hist(path, hists, names, ignore_absent, shard):
    """A shard's histograms and per-image counts with what a merge needs to check and to
    report."""
    meta = {'shard': list(shard), 'heads': [
        {'label': label, 'class_names': list(names[label]),
         'ignore_absent': bool(ignore_absent[label]), 'n_images': hist.n_images}
        for label, hist in hists.items()]}
    arrays = {f'hist_{label}': hist.hist for label, hist in hists.items()}
    _write_npz(path, meta=json.dumps(meta), **arrays, **_image_arrays(hists))


def load_hist(path):
    """(shard, hists, names, ignore_absent) of a file save_hist wrote; the per-image counts
    are None in files written without them."""
    with np.load(path) as f:
        meta = json.loads(str(f['meta']))
        hists = {}
        for head in meta['heads']:
            label, count = head['label'], len(head['class_names'])
            images = ImageCounts(count, f[f'ids_{label}'].tolist(), f[f'counts_{label}']) \
                if f'ids_{label}' in f.files else None
            hists[label] = ConfusionMatrix(count, f[f'hist_{label}'], head['n_images'], images)
    names = {head['label']: tuple(head['class_names']) for head in meta['heads']}
    ignore = {head['label']: head['ignore_absent'] for head in meta['heads']}
    return tuple(meta['shard']), hists, names, ignore


def merge_hists(paths):
    """Sum the shards of one split, their per-image counts in shard order (the order of the
    whole split); every shard i/n must be present exactly once."""
    loaded, seen = [], {}
    for path in paths:
        shard, hists, names, ignore = load_hist(path)
        if shard in seen:
            raise UsageError(f'{path} and {seen[shard]} are both shard {shard[0]}/{shard[1]}')
        seen[shard] = path
        if loaded and names != loaded[0][2]:
            raise UsageError(f'{path} scores other labels or classes than {paths[0]}')
        loaded.append((shard, hists, names, ignore))
    counts = {n for _, n in seen}
    indices = sorted(i for i, _ in seen)
    if len(counts) != 1 or indices != list(range(counts.pop())):
        missing = ', '.join(f'{i}/{n}' for i, n in sorted(seen))
        raise UsageError(f'the shards do not make one whole split (have {missing})')
    loaded.sort(key=lambda item: item[0])
    _, merged, names, ignore = loaded[0]
    for _, hists, _, _ in loaded[1:]:
        for label, hist in hists.items():
            merged[label] += hist
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
            hist.add(gt, pred, gt_path.stem)
        except ValueError as e:
            raise UsageError(f'{pred_path}: {e}') from e
        progress.update()
    return hist
