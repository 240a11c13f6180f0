"""The results page: every scored run's numbers, training curves and confusion matrix, the
reproduction table, and the val images of each run (image, ground truth, prediction,
error map, per-image mean IU and pixel accuracy), sortable, filterable by a class present,
paginated, with several runs of one split side by side, and the class legend.

A static site (solve/page.py writes it into runs/page/; it works from file:// and from any
file server, with no network):

  index.html, page.js, page.css   the page and its script (fcn/reports/page_site/)
  index.json                      everything the page shows, as data
  data.js                         the same as a script (`window.PAGE = ...`): pages opened
                                  from file:// cannot fetch JSON
  runs/RUN/                       a run's curves (loss.png, mean_iu.png), confusion heat map
                                  (rows normalised), and per image its prediction and error
                                  map thumbnails: pred/[LABEL/]ID.png, err/[LABEL/]ID.png
  sets/SET/                       a split's image thumbnails ID.jpg and ground truth
                                  thumbnails gt/[LABEL/]ID.png (SET: a digest of the data
                                  layer and its parameters)
  cache/SET/gt/[LABEL/]ID.png     full-size ground truth, which the error maps are made from
  cache.json                      each rendered file's sources' sizes and mtimes: a file is
                                  rendered again only when a source changes

The images come from what scoring saved: score-images.npz (per-image counts) and
predictions/ in the run folder (solve/score.py writes both); the images and labels are
read through the model's own val data layer, without Caffe. Whatever a run lacks (a
score, per-image counts, predictions, an image of the split) is named on the page, with
what to do, and the rest is shown.
"""
import hashlib
import importlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from fcn import evaluation, nets, paths, pictures, prototxt, runs
from fcn.errors import UsageError

SITE = Path(__file__).with_name('page_site')
SITE_FILES = ('index.html', 'page.js', 'page.css')
THUMB = 192           # thumbnails' longest side, pixels
JPEG_QUALITY = 85
METRICS = ('pixel_acc', 'mean_acc', 'mean_iu', 'fwavacc')
# The error map's codes and colours; a thumbnail pixel shows the highest code under it.
RIGHT, VOID, WRONG = range(3)
ERROR_COLOURS = np.array([[245, 245, 245], [55, 126, 184], [228, 26, 28]], np.uint8)
# Folders directly in runs/ that hold no run of their own.
NOT_RUNS = {runs.PAGE_DIR, runs.RELEASED, 'demo', 'report', 'short', 'rehearsal', 'bench'}
RUN_FILES = (runs.SCORE, runs.FINAL_WEIGHTS, runs.TRAIN_LOG, runs.VAL_LOG)


# ---- the runs ----------------------------------------------------------------------------

def find_runs(runs_dir):
    """(key, RunFolder, released) of every run folder: runs/MODEL/ and runs/released/MODEL/
    holding a score, weights or a training log; in the model table's order (FCN-32s, 16s,
    8s of a dataset in a row), then the others by name, each run before the release's."""
    from models import registry
    order = {name: index for index, name in enumerate(registry.load().models)}
    runs_dir = Path(runs_dir)
    found = []
    for released, parent in ((False, runs_dir), (True, runs_dir / runs.RELEASED)):
        if not parent.is_dir():
            continue
        for folder in sorted(parent.iterdir()):
            if not folder.is_dir() or (not released and folder.name in NOT_RUNS):
                continue
            if any((folder / name).exists() for name in RUN_FILES):
                key = f'released--{folder.name}' if released else folder.name
                found.append((key, runs.RunFolder(folder), released))
    return sorted(found, key=lambda run: (order.get(run[1].path.name, len(order)),
                                          run[1].path.name, run[2]))


def head_documents(document, spec):
    """{label: metrics} of a score.json: one head at the top level, several by label."""
    if 'mean_iu' in document:
        label = spec.heads[0].label if spec is not None and len(spec.heads) == 1 else 'label'
        return {label: document}
    return {label: value for label, value in document.items()
            if isinstance(value, dict) and 'mean_iu' in value}


def model_spec(name):
    from models import registry
    return registry.load().models.get(name)


# ---- a split's images, through the model's data layer ------------------------------------

class SplitImages:
    """The images and labels of one split, read by the model's val data layer (its class
    and parameters from models/MODEL/val.prototxt) without Caffe's set-up."""

    def __init__(self, model, split):
        from layers import base
        net = prototxt.read_net(nets.model_file(model, 'val'))
        layer = prototxt.data_layers(net)[0].python_param
        module = importlib.import_module(layer.module)
        cls = getattr(module, layer.layer)
        params = json.loads(layer.param_str or '{}')
        params['split'] = split
        checked = base.parse_params(json.dumps(params), {**cls.PARAMS, **base.COMMON_PARAMS},
                                    cls.__name__)
        self.reader = cls.__new__(cls)
        self.split_file = Path(self.reader.configure(checked))
        self.tops = self.reader.top_names()
        self.mean = params.get('mean', getattr(module, 'MEAN_BGR', None))
        identity = [layer.module, layer.layer, params, str(paths.data_root())]
        self.key = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
        self.split = split

    def signature(self):
        """What the split's thumbnails are made from: the split file's size and mtime."""
        stat = self.split_file.stat()
        return f'{self.split_file}:{stat.st_size}:{stat.st_mtime_ns}'

    def load(self, image_id):
        """(RGB image, {label top: 2-D label map}) of one example."""
        arrays = dict(zip(self.tops, self.reader.load(image_id)))
        labels = {top: array[0] for top, array in arrays.items()
                  if top in self.reader.NUM_CLASSES}
        image = next(array for top, array in arrays.items() if top not in labels)
        return self.rgb(image), labels

    def rgb(self, array):
        """An input top (channels x H x W, BGR, mean subtracted) as an RGB uint8 picture;
        inputs other than BGR (depth, HHA without a mean) stretched to 0..255."""
        array = np.asarray(array, np.float32)
        if array.shape[0] == 3 and self.mean is not None and len(self.mean) == 3:
            picture = array + np.asarray(self.mean, np.float32)[:, None, None]
        else:
            low, high = float(array.min()), float(array.max())
            picture = (array - low) * (255 / (high - low if high > low else 1))
        picture = picture[::-1] if picture.shape[0] == 3 else np.repeat(picture[:1], 3, 0)
        return np.clip(picture.round(), 0, 255).astype(np.uint8).transpose(1, 2, 0)


# ---- rendering, once per source ------------------------------------------------------------

class Renderer:
    """Writes files under the page folder only when the signature of their sources differs
    from the one recorded in cache.json; gathers the legends and splits the runs show."""

    def __init__(self, out):
        self.legends = {}      # (dataset, head label): class names
        self.sets = {}         # split key: what it is
        self.set_missing = {}  # split key: {id: why it could not be read}
        self.out = Path(out)
        self.manifest_path = self.out / 'cache.json'
        try:
            self.manifest = json.loads(self.manifest_path.read_text())
        except (FileNotFoundError, ValueError):
            self.manifest = {}
        self.rendered = self.reused = 0

    def fresh(self, relative, signature):
        return self.manifest.get(relative) == signature and (self.out / relative).is_file()

    def done(self, relative, signature):
        self.manifest[relative] = signature
        self.rendered += 1

    def save(self):
        pictures.atomic_save(self.manifest_path, lambda tmp: Path(tmp).write_text(
            json.dumps(self.manifest, sort_keys=True)))


def file_signature(path):
    stat = Path(path).stat()
    return f'{stat.st_size}:{stat.st_mtime_ns}'


def thumbnail_size(width, height):
    scale = min(1.0, THUMB / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def save_jpeg_thumbnail(path, rgb):
    image = Image.fromarray(rgb)
    image = image.resize(thumbnail_size(*image.size), Image.LANCZOS)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pictures.atomic_save(path, lambda tmp: image.save(tmp, format='JPEG', quality=JPEG_QUALITY))


def save_label_thumbnail(path, label):
    image = pictures.label_image(label)
    image = image.resize(thumbnail_size(*image.size), Image.NEAREST)
    pictures.atomic_save(path, lambda tmp: image.save(tmp, format='PNG'))


def error_codes(gt, pred, num_classes):
    """Per pixel RIGHT, WRONG, or VOID (ground truth void or outside the classes)."""
    return np.where(gt >= num_classes, VOID, np.where(gt != pred, WRONG, RIGHT)).astype(np.uint8)


def shrink_codes(codes):
    """The codes in blocks of a thumbnail's pixel, each block its highest code: a wrong
    line thinner than a thumbnail pixel still shows."""
    factor = -(-max(codes.shape) // THUMB)
    if factor == 1:
        return codes
    height, width = -(-codes.shape[0] // factor), -(-codes.shape[1] // factor)
    padded = np.zeros((height * factor, width * factor), codes.dtype)
    padded[:codes.shape[0], :codes.shape[1]] = codes
    return padded.reshape(height, factor, width, factor).max(axis=(1, 3))


def save_error_thumbnail(path, codes):
    image = Image.fromarray(shrink_codes(codes), 'L').convert('P')
    image.putpalette(ERROR_COLOURS.tobytes())
    pictures.atomic_save(path, lambda tmp: image.save(tmp, format='PNG'))


def label_path(folder, label, multi_head, image_id):
    return Path(folder) / label / f'{image_id}.png' if multi_head else \
        Path(folder) / f'{image_id}.png'


def render_split(renderer, split_images, ids, labels):
    """Thumbnails of a split's images and ground truth, and the full-size ground truth the
    error maps are made from. Returns {id: why it could not be read} for the ids that
    failed."""
    signature = split_images.signature()
    missing = {}
    multi = len(labels) > 1
    for image_id in ids:
        image_rel = f'sets/{split_images.key}/{image_id}.jpg'
        gt_rels = {label: (label_path(f'cache/{split_images.key}/gt', label, multi, image_id),
                           label_path(f'sets/{split_images.key}/gt', label, multi, image_id))
                   for label in labels}
        wanted = [image_rel] + [str(rel) for pair in gt_rels.values() for rel in pair]
        if all(renderer.fresh(rel, signature) for rel in wanted):
            renderer.reused += len(wanted)
            continue
        try:
            rgb, label_maps = split_images.load(image_id)
        except (OSError, ValueError) as e:
            missing[image_id] = str(e)
            continue
        save_jpeg_thumbnail(renderer.out / image_rel, rgb)
        renderer.done(image_rel, signature)
        for label, (full_rel, thumb_rel) in gt_rels.items():
            pictures.save_label_png(renderer.out / full_rel, label_maps[label])
            save_label_thumbnail(renderer.out / thumb_rel, label_maps[label])
            renderer.done(str(full_rel), signature)
            renderer.done(str(thumb_rel), signature)
    return missing


def render_predictions(renderer, key, split_key, pred_dir, label, multi, ids, num_classes,
                       unreadable):
    """Each image's prediction and error map thumbnails for one run and head. Returns the
    ids without a prediction file."""
    absent = []
    for image_id in ids:
        source = label_path(pred_dir, label, multi, image_id)
        if not source.is_file():
            absent.append(image_id)
            continue
        pred_rel = str(label_path(f'runs/{key}/pred', label, multi, image_id))
        err_rel = str(label_path(f'runs/{key}/err', label, multi, image_id))
        gt_full = renderer.out / label_path(f'cache/{split_key}/gt', label, multi, image_id)
        signature = file_signature(source)
        pred = None  # read once, for whichever of the two pictures is rendered
        if not renderer.fresh(pred_rel, signature):
            pred = pictures.read_label_png(source)
            save_label_thumbnail(renderer.out / pred_rel, pred)
            renderer.done(pred_rel, signature)
        else:
            renderer.reused += 1
        if image_id in unreadable or not gt_full.is_file():
            continue
        err_signature = f'{signature}|{file_signature(gt_full)}'
        if renderer.fresh(err_rel, err_signature):
            renderer.reused += 1
            continue
        if pred is None:
            pred = pictures.read_label_png(source)
        gt = pictures.read_label_png(gt_full)
        if pred.shape != gt.shape:
            continue
        save_error_thumbnail(renderer.out / err_rel, error_codes(gt, pred, num_classes))
        renderer.done(err_rel, err_signature)
    return absent


def copy_if_changed(renderer, source, relative):
    signature = file_signature(source)
    if renderer.fresh(relative, signature):
        renderer.reused += 1
        return
    target = renderer.out / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    pictures.atomic_save(target, lambda tmp: shutil.copyfile(source, tmp))
    renderer.done(relative, signature)


def confusion_heat_map(renderer, key, label, head, score_path, multi_head):
    """The confusion matrix (rows normalised) of one head: the picture scoring drew beside
    score.json where it is as new, else drawn from score.json's counts."""
    relative = f'runs/{key}/confusion-{label}.png'
    drawn = score_path.with_name(f'{score_path.stem}-confusion'
                                 f'{f"-{label}" if multi_head else ""}.png')
    if drawn.is_file() and drawn.stat().st_mtime >= score_path.stat().st_mtime:
        copy_if_changed(renderer, drawn, relative)
        return relative
    signature = file_signature(score_path)
    if renderer.fresh(relative, signature):
        renderer.reused += 1
        return relative
    pictures.save_confusion_png(renderer.out / relative, head['confusion'], head['class_names'])
    renderer.done(relative, signature)
    return relative


# ---- the data of the page --------------------------------------------------------------

def number(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else \
        round(float(value), 6)


def colour(class_id):
    return '#' + ''.join(f'{int(v):02x}' for v in pictures.PALETTE[class_id])


def rerun_hint(model, released):
    return f'make eval-{model}' if released else f'make {model}'


def describe_run(renderer, key, folder, released, splits):
    """One run's entry of the page data; renders its pictures."""
    score_path = folder.score()
    model = folder.path.name
    entry = {'key': key, 'name': f'{model} (released weights)' if released else model,
             'model': model, 'released': released, 'folder': str(folder.path),
             'missing': [], 'notes': [], 'heads': [], 'curves': []}
    for plot in (folder.loss_plot, folder.mean_iu_plot):
        if plot.is_file():
            relative = f'runs/{key}/{plot.name}'
            copy_if_changed(renderer, plot, relative)
            entry['curves'].append(relative)
    if not score_path.is_file():
        spec = model_spec(model)
        if spec is not None and spec.task != 'segmentation':
            # A classifier trained to start FCNs from (the demo's toy-vgg16): its curves
            # and validations are what it has to show.
            entry['notes'].append(f'a classifier, not scored: its validations are in '
                                  f'{folder.val_log}')
            return entry
        entry['missing'].append(f'{score_path}: no score; score the run '
                                f'(`{rerun_hint(model, released)}`, or solve/score.py '
                                f'{model} --weights WEIGHTS)')
        return entry
    try:
        document = json.loads(score_path.read_text())
    except ValueError as e:
        entry['missing'].append(f'{score_path} is not JSON ({e}): score the run again')
        return entry
    model = document.get('model', model)
    spec = model_spec(model)
    entry.update(model=model, split=document.get('split'), weights=document.get('weights'))
    heads = head_documents(document, spec)
    if not heads:
        entry['missing'].append(f'{score_path} holds no metrics: score the run again')
        return entry
    for label, head in heads.items():
        names = head.get('class_names') or [f'class {i}' for i in
                                            range(len(head.get('per_class_iu', {})))]
        item = {'label': label, 'n_images': head.get('n_images'),
                'metrics': {k: number(head.get(k)) for k in METRICS},
                'per_class_iu': [[name, number(value)] for name, value in
                                 head.get('per_class_iu', {}).items()],
                'class_names': list(names)}
        if 'confusion' in head:
            item['confusion'] = confusion_heat_map(renderer, key, label,
                                                   dict(head, class_names=names), score_path,
                                                   len(heads) > 1)
        else:
            entry['missing'].append(f'{score_path}: no confusion matrix for {label} (an older '
                                    f'score): score again (`{rerun_hint(model, released)}`)')
        entry['heads'].append(item)
    describe_images(renderer, entry, folder, spec, splits, score_path, released)
    return entry


def describe_images(renderer, entry, folder, spec, splits, score_path, released):
    """The run's per-image scores and pictures, or what is missing for them."""
    model = entry['model']
    hint = rerun_hint(model, released)
    if spec is None:
        entry['missing'].append(f'images: no model {model} in the model table '
                                f'(models/specs.py, models/user/), so its data is unknown')
        return
    if spec.task != 'segmentation':
        entry['notes'].append('a classifier: no segmentation images to show')
        return
    for head in spec.heads:
        renderer.legends[(spec.dataset, head.label)] = list(nets.class_names(spec, head))
    counts_path = runs.image_counts_file(score_path)
    if not counts_path.is_file():
        entry['missing'].append(f'{counts_path}: no per-image scores ({score_path.name} was '
                                f'written before scoring kept them): score again, e.g. '
                                f'`rm {score_path}; {hint}`')
        return
    per_head = evaluation.load_image_counts(counts_path)
    labels = []
    for item in entry['heads']:
        label = item['label']
        if label not in per_head:
            entry['missing'].append(f'{counts_path} has no counts of {label}: score again '
                                    f'(`{hint}`)')
        elif len(per_head[label][1].ids) != item['n_images']:
            entry['missing'].append(f'{counts_path} counts {len(per_head[label][1].ids)} '
                                    f'images of {label}, {score_path.name} '
                                    f'{item["n_images"]}: the two are from different '
                                    f'scorings; score again (`{hint}`)')
        else:
            labels.append(label)
    if not labels:
        return
    split = entry.get('split') or spec.val_split
    if (model, split) not in splits:
        try:
            splits[model, split] = SplitImages(model, split)
        except (OSError, ValueError, LookupError, ImportError, UsageError) as e:
            splits[model, split] = e  # said on the page; the other runs still show
    split_images = splits[model, split]
    if isinstance(split_images, Exception):
        entry['missing'].append(f'the images of {model} {split} cannot be read: '
                                f'{split_images}')
        return
    pred_dir = folder.predictions(None if split == spec.val_split else split)
    multi = len(spec.heads) > 1
    first_ids = per_head[labels[0]][1].ids
    unreadable = render_split(renderer, split_images, first_ids, labels)
    renderer.set_missing.setdefault(split_images.key, {}).update(unreadable)
    if unreadable:
        first = next(iter(unreadable.items()))
        entry['missing'].append(f'{len(unreadable)} of {len(first_ids)} images of {split} '
                                f'could not be read (first: {first[0]}: {first[1]})')
    if not pred_dir.is_dir():
        entry['missing'].append(f'{pred_dir}: no predictions saved: score again (e.g. '
                                f'`rm {score_path}; {hint}`; solve/score.py saves them)')
    for item in entry['heads']:
        label = item['label']
        if label not in labels:
            continue
        names, counts = per_head[label]
        pixel_acc, mean_iu = counts.metrics()
        table = counts.table()
        absent = render_predictions(renderer, entry['key'], split_images.key, pred_dir, label,
                                    multi, counts.ids, len(names), unreadable) \
            if pred_dir.is_dir() else list(counts.ids)
        if absent and pred_dir.is_dir():
            entry['missing'].append(f'{len(absent)} of {len(counts.ids)} predictions missing '
                                    f'in {pred_dir} (first: {absent[0]})')
        item['set'] = split_images.key
        item['images'] = {
            'ids': counts.ids,
            'mean_iu': [number(v) for v in mean_iu],
            'pixel_acc': [number(v) for v in pixel_acc],
            'classes': [np.flatnonzero(row).tolist() for row in table[:, 1] > 0],
            'no_prediction': sorted(absent),
            'multi': multi,
        }
        renderer.sets[split_images.key] = {'model': model, 'split': split,
                                           'dataset': spec.dataset}


def reproduction_rows(runs_dir):
    """The reproduction table's rows that have a figure of this project's (released weights
    scored here, or a run of one's own)."""
    from fcn.reports import reproduction
    rows = []
    for row in reproduction.gather(runs_dir):
        if row['released'] is None and row['own'] is None:
            continue
        published = row['published']
        rows.append({'model': row['model'],
                     'published': None if published is None else
                     [published.mean_iu, published.split, published.where],
                     'released': row['released'] and list(row['released']),
                     'own': row['own'] and list(row['own'])})
    return rows


def build(runs_dir=None, out=None):
    """Write the page for every run under `runs_dir` (default paths.RUNS_DIR) into `out`
    (default RUNS_DIR/page). Returns (index.html's path, the page data, counts of files
    rendered and reused)."""
    runs_dir = Path(runs_dir or paths.RUNS_DIR)
    out = Path(out or runs_dir / runs.PAGE_DIR)
    out.mkdir(parents=True, exist_ok=True)
    renderer = Renderer(out)
    splits = {}
    entries = [describe_run(renderer, key, folder, released, splits)
               for key, folder, released in find_runs(runs_dir)]
    for key, info in renderer.sets.items():
        info['missing'] = renderer.set_missing.get(key, {})
    data = {
        'runs_dir': str(runs_dir),
        'runs': entries,
        'sets': renderer.sets,
        'reproduction': reproduction_rows(runs_dir),
        'legends': [{'dataset': dataset, 'label': label,
                     'classes': [[i, name, colour(i)] for i, name in enumerate(names)]}
                    for (dataset, label), names in sorted(renderer.legends.items())],
        'error_colours': {name: '#' + ''.join(f'{v:02x}' for v in ERROR_COLOURS[code])
                          for name, code in (('right', RIGHT), ('wrong', WRONG),
                                             ('void', VOID))},
    }
    text = json.dumps(data, separators=(',', ':'))
    pictures.atomic_save(out / 'index.json', lambda tmp: Path(tmp).write_text(text))
    # </ cannot end the script early: the data is JSON, whose strings may escape '/'.
    script = 'window.PAGE = ' + text.replace('</', '<\\/') + ';\n'
    pictures.atomic_save(out / 'data.js', lambda tmp: Path(tmp).write_text(script))
    for name in SITE_FILES:
        pictures.atomic_save(out / name, lambda tmp, name=name: shutil.copyfile(SITE / name, tmp))
    renderer.save()
    return out / 'index.html', data, {'rendered': renderer.rendered, 'reused': renderer.reused}


def disk_use(folder):
    """Bytes of every file below `folder`."""
    return sum(path.stat().st_size for path in Path(folder).rglob('*') if path.is_file())
