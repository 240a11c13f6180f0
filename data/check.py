#!/usr/bin/env python3
"""Check a segmentation dataset of your own before training on it.

  make data-check DATA=DIR        (or: python data/check.py DIR [--json OUT])

A dataset is a folder in one of two layouts, with a class list:

  VOC layout                               simple layout
  DIR/classes.txt                          DIR/classes.txt
  DIR/JPEGImages/<id>.jpg                  DIR/images/<id>.jpg
  DIR/SegmentationClass/<id>.png           DIR/masks/<id>.png
  DIR/ImageSets/Segmentation/train.txt     DIR/train.txt
  DIR/ImageSets/Segmentation/val.txt       DIR/val.txt

- classes.txt: line i names class i, the background first; the number of lines is K.
- Images: 8-bit RGB or grey, any size, in any of the extensions IMAGE_EXTENSIONS.
- Labels: PNG, palette (the pixel is the palette index, as VOC's) or 8-bit grey, the same
  size as the image; each pixel is a class 0..K-1 or 255 (void: not learnt, not scored).
- Split files: one id per line, an id being the file name without its extension.

Every image of every split is read: missing and unreadable files, sizes that differ,
label values outside the classes, empty splits, ids in two splits are errors, each naming
the file and what to do; the class pixel frequencies, the image sizes and the mean colour
are printed. Exit status 1 if any error was found. The model declared on the dataset
(`solve/new_model.py`) and the data layer that reads it (`layers.folder`) use this
module's reading functions, so what passes here is what training reads.
"""
import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fcn.errors import UsageError, run_command

CLASSES_FILE = 'classes.txt'
VOID = 255
# Where each layout keeps images, labels and split files, relative to the dataset folder.
LAYOUTS = {
    'voc': dict(images='JPEGImages', labels='SegmentationClass',
                splits='ImageSets/Segmentation'),
    'simple': dict(images='images', labels='masks', splits='.'),
}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.tif', '.tiff')
LABEL_EXTENSION = '.png'
# The most problems printed per kind; the rest are counted.
SHOWN_PER_KIND = 10

RGB_FIX = 'save it as 8-bit RGB or grey (e.g. PIL: Image.open(f).convert("RGB").save(f))'
LABEL_FIX = ('save it as a palette or 8-bit grey PNG whose pixel values are class ids '
             '(a colour mask must first be mapped to ids)')


class DatasetError(ValueError):
    """A problem with one file of a dataset: the file, what is wrong, and what to do."""

    def __init__(self, path, problem, fix, kind=None):
        super().__init__(f'{path}: {problem}; {fix}')
        self.path, self.problem, self.fix = Path(path), problem, fix
        self.kind = kind or problem.split(':')[0]


# ---- reading ---------------------------------------------------------------------------

def repeated(items):
    """The items listed more than once, sorted."""
    return sorted(item for item, count in Counter(items).items() if count > 1)


def read_lines(path, missing_fix, kind):
    """The lines of a text file; a missing or unreadable one is a DatasetError."""
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise DatasetError(path, 'missing', missing_fix, kind=f'missing {kind}') from None
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(path, f'unreadable ({error})', 'save it as plain UTF-8 text',
                           kind=f'unreadable {kind}') from None


def read_classes(path):
    """The class names of a classes.txt: one per line, background first."""
    path = Path(path)
    lines = read_lines(path, 'write the class names into it, one per line, line i naming '
                       'class i, the background first', 'class list')
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if '' in names:
        raise DatasetError(path, f'line {names.index("") + 1} is blank',
                           'name every class: line i names class i')
    if len(names) < 2:
        raise DatasetError(path, f'lists {len(names)} class(es)',
                           'list the background and at least one class, one per line')
    if len(names) > VOID:
        raise DatasetError(path, f'lists {len(names)} classes',
                           f'at most {VOID} (the value {VOID} marks void pixels)')
    if repeated(names):
        raise DatasetError(path, f'names {", ".join(repeated(names))} more than once',
                           'give every class its own name')
    return names


def detect_layout(root):
    """The layout whose image and label folders the dataset folder has."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, 'no such folder', 'give the folder holding the dataset')
    found = [name for name, layout in LAYOUTS.items()
             if (root / layout['images']).is_dir() and (root / layout['labels']).is_dir()]
    if len(found) == 1:
        return found[0]
    described = ' or '.join(f'{layout["images"]}/ and {layout["labels"]}/'
                            for layout in LAYOUTS.values())
    if not found:
        raise DatasetError(root, f'has neither layout ({described})',
                           'put the images and the label PNGs into one of them '
                           '(see `data/check.py --help`)')
    raise DatasetError(root, f'has both layouts ({described})', 'keep only one of them')


def read_split(path):
    """The ids of a split file, in order."""
    path = Path(path)
    lines = read_lines(path, 'list the ids of the split in it, one per line (the file names '
                       'without extension)', 'split')
    ids = [line.strip() for line in lines if line.strip()]
    if not ids:
        raise DatasetError(path, 'empty split: it lists no ids', 'list the ids of the split, '
                           'one per line', kind='empty split')
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if len(entry.split()) > 1 or '/' in entry or '\\' in entry:
            raise DatasetError(path, f'line {number} ({entry!r}) is not one bare id',
                               'write one file name per line, without folders or spaces')
        if entry.lower().endswith(IMAGE_EXTENSIONS):
            raise DatasetError(path, f'line {number} ({entry!r}) has a file extension',
                               f'write the id without it ({os.path.splitext(entry)[0]!r})')
    if repeated(ids):
        raise DatasetError(path, f'lists {", ".join(repeated(ids)[:5])} more than once',
                           'list every id once')
    return ids


def read_file(path, what, missing_fix, convert):
    """convert(PIL image) of an image file; a missing or unreadable file is a DatasetError."""
    try:
        with Image.open(path) as image:
            return convert(image)
    except FileNotFoundError:
        raise DatasetError(path, 'missing', missing_fix, kind=f'missing {what}') from None
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise DatasetError(path, f'unreadable {what} ({error})', 'replace the file with a '
                           'readable one', kind=f'unreadable {what}') from None


def load_rgb(path):
    """An image as height x width x 3 uint8 RGB (a grey or palette image in RGB)."""
    def convert(image):
        if image.mode in ('L', 'P'):
            image = image.convert('RGB')
        elif image.mode != 'RGB':
            raise DatasetError(path, f'unsupported image mode {image.mode}', RGB_FIX,
                               kind='image mode')
        return np.array(image)
    return read_file(path, 'image', 'add the image or remove its id from the split files',
                     convert)


def load_label(path):
    """A label PNG's class ids as a height x width uint8 array."""
    def convert(image):
        if image.format != 'PNG':
            raise DatasetError(path, f'a {image.format} file, not a PNG', LABEL_FIX,
                               kind='label format')
        if image.mode == '1':
            return np.array(image, np.uint8)
        if image.mode not in ('P', 'L'):
            raise DatasetError(path, f'unsupported label mode {image.mode}', LABEL_FIX,
                               kind='label mode')
        return np.array(image)
    return read_file(path, 'label', 'add the label PNG (named as its image) or remove its id '
                     'from the split files', convert)


def check_labels(label, num_classes, path):
    """Labels are classes 0..K-1 or void."""
    bad = (label >= num_classes) & (label != VOID)
    if bad.any():
        values = ', '.join(map(str, np.unique(label[bad])[:8]))
        raise DatasetError(path, f'label values {values} are outside the classes 0-'
                           f'{num_classes - 1} of {CLASSES_FILE} ({VOID} is void)',
                           f'add those classes to {CLASSES_FILE}, or map those pixels to a '
                           f'class or to {VOID}', kind='label values')


class Dataset:
    """Where a dataset folder of a layout keeps its files."""

    def __init__(self, root, layout=None):
        self.root = Path(root)
        self.layout = layout or detect_layout(self.root)
        if self.layout not in LAYOUTS:
            raise ValueError(f'unknown layout {self.layout!r}; known: {", ".join(LAYOUTS)}')
        folders = LAYOUTS[self.layout]
        self.images = self.root / folders['images']
        self.labels = self.root / folders['labels']
        self.splits = self.root / folders['splits']
        self._index = None

    def split_file(self, split):
        return self.splits / f'{split}.txt'

    def label_path(self, image_id):
        return self.labels / f'{image_id}{LABEL_EXTENSION}'

    def index(self):
        """{id: [image file names]} of the image folder, listed once."""
        if self._index is None:
            self._index = {}
            with os.scandir(self.images) as entries:
                for entry in entries:
                    stem, extension = os.path.splitext(entry.name)
                    if extension.lower() in IMAGE_EXTENSIONS:
                        self._index.setdefault(stem, []).append(entry.name)
        return self._index

    def image_path(self, image_id):
        names = self.index().get(image_id, [])
        if len(names) == 1:
            return self.images / names[0]
        if not names:
            raise DatasetError(self.images / f'{image_id}.*', f'missing: no image of this '
                               f'id with any of the extensions {", ".join(IMAGE_EXTENSIONS)}',
                               'add the image or remove its id from the split files',
                               kind='missing image')
        raise DatasetError(self.images / names[0], f'ambiguous: {", ".join(sorted(names))} '
                           f'share the id {image_id}', 'keep one of them', kind='ambiguous image')

    def example(self, image_id, num_classes):
        """(RGB image, labels) of one id, checked: same size, labels in the classes."""
        image = load_rgb(self.image_path(image_id))
        label_path = self.label_path(image_id)
        label = load_label(label_path)
        if label.shape != image.shape[:2]:
            raise DatasetError(label_path, f'size {label.shape[1]}x{label.shape[0]} differs '
                               f'from its image ({image.shape[1]}x{image.shape[0]})',
                               'the label must cover the image pixel for pixel: resize it '
                               'to the image with nearest-neighbour sampling',
                               kind='size mismatch')
        check_labels(label, num_classes, label_path)
        return image, label


# ---- the check -------------------------------------------------------------------------

@dataclass
class Report:
    """What the check found."""
    root: Path
    layout: str = None
    classes: list = field(default_factory=list)
    splits: dict = field(default_factory=dict)           # split -> ids
    errors: list = field(default_factory=list)           # DatasetError
    warnings: list = field(default_factory=list)         # str
    pixels: dict = field(default_factory=dict)           # split -> per-class pixel counts
    void: dict = field(default_factory=dict)             # split -> void pixel count
    sizes: list = field(default_factory=list)            # (height, width) of every image read
    colour_sum: np.ndarray = field(default_factory=lambda: np.zeros(3))  # RGB, train split
    colour_pixels: int = 0

    @property
    def ok(self):
        return not self.errors

    def mean_bgr(self):
        """The mean colour of the training images, B G R, as the data layers subtract it."""
        if not self.colour_pixels:
            return None
        return [round(float(v), 3) for v in (self.colour_sum / self.colour_pixels)[::-1]]

    def size_range(self):
        if not self.sizes:
            return None
        heights, widths = zip(*self.sizes)
        return {'height': [min(heights), max(heights)], 'width': [min(widths), max(widths)]}

    def summary(self):
        """The check's findings as JSON-ready data."""
        return {
            'root': str(self.root), 'layout': self.layout, 'classes': self.classes,
            'images': {split: len(ids) for split, ids in self.splits.items()},
            'sizes': self.size_range(), 'mean_bgr': self.mean_bgr(),
            'pixels': {split: [int(v) for v in counts] for split, counts in self.pixels.items()},
            'void_pixels': {split: int(v) for split, v in self.void.items()},
            'errors': [str(error) for error in self.errors], 'warnings': self.warnings,
        }

    def lines(self, ready='solve/new_model.py NAME --data DIR --from ...'):
        """The printed report: the dataset, then its problems, then `ready` if none."""
        yield (f'dataset {self.root} ({self.layout or "layout unknown"} layout), '
               f'{len(self.classes)} classes')
        if self.splits:
            yield '  images: ' + ', '.join(f'{split} {len(ids)}'
                                           for split, ids in self.splits.items())
        sizes = self.size_range()
        if sizes:
            yield (f'  image sizes: height {sizes["height"][0]}-{sizes["height"][1]}, '
                   f'width {sizes["width"][0]}-{sizes["width"][1]}')
        if self.mean_bgr():
            yield '  mean colour (B G R, training images): ' + ' '.join(
                f'{v:.3f}' for v in self.mean_bgr())
        if self.pixels and self.classes:
            splits = list(self.pixels)
            width = max(len(name) for name in self.classes + ['void'])
            yield '  class pixel frequencies (% of labelled pixels):'
            yield '    ' + ' ' * (width + 5) + ''.join(f'{split:>10}' for split in splits)
            totals = {split: max(1, int(self.pixels[split].sum())) for split in splits}
            for index, name in enumerate(self.classes):
                yield f'    {index:3d} {name:<{width}}' + ''.join(
                    f'{100 * self.pixels[split][index] / totals[split]:10.2f}'
                    for split in splits)
            yield (f'    {VOID:3d} {"void":<{width}}' + ''.join(
                f'{self.void[split]:>10}' for split in splits) + '  (pixels, not counted)')
        for warning in self.warnings:
            yield f'warning: {warning}'
        shown = {}
        for error in self.errors:
            shown[error.kind] = shown.get(error.kind, 0) + 1
            if shown[error.kind] <= SHOWN_PER_KIND:
                yield f'error: {error.path}: {error.problem}\n  fix: {error.fix}'
        for kind, count in shown.items():
            if count > SHOWN_PER_KIND:
                yield f'error: ... and {count - SHOWN_PER_KIND} more of the kind "{kind}"'
        yield (f'{len(self.errors)} error(s): fix them and check again' if self.errors
               else f'ok: ready to train ({ready})')


def check(root, classes_file=None, splits=('train', 'val'), progress=None, classes=None):
    """Read every file the splits name and report what is wrong (a Report). The classes
    are `classes` if given, else read from classes_file (default DIR/classes.txt)."""
    root = Path(root)
    report = Report(root)
    try:
        report.classes = list(classes) if classes else read_classes(
            Path(classes_file) if classes_file else root / CLASSES_FILE)
    except DatasetError as error:
        report.errors.append(error)
    try:
        dataset = Dataset(root)
    except DatasetError as error:
        report.errors.append(error)
        return report
    report.layout = dataset.layout
    for split in splits:
        try:
            report.splits[split] = read_split(dataset.split_file(split))
        except DatasetError as error:
            report.errors.append(error)
    seen = {}
    for split, ids in report.splits.items():
        both = [i for i in ids if i in seen]
        if both:
            other = seen[both[0]]
            report.errors.append(DatasetError(
                dataset.split_file(split), f'{len(both)} id(s) also in '
                f'{dataset.split_file(other).name}: {", ".join(both[:5])}',
                'an image belongs to one split: remove them from one of the files',
                kind='ids in two splits'))
        seen.update((i, split) for i in ids)
    num_classes = len(report.classes) or VOID
    total, done = sum(len(ids) for ids in report.splits.values()), 0
    for split, ids in report.splits.items():
        counts = np.zeros(num_classes, np.int64)
        void = 0
        for image_id in ids:
            try:
                image, label = dataset.example(image_id, num_classes)
            except DatasetError as error:
                report.errors.append(error)
            else:
                counts += np.bincount(label[label != VOID].ravel(), minlength=num_classes)
                void += int((label == VOID).sum())
                report.sizes.append(image.shape[:2])
                if split == splits[0]:
                    report.colour_sum += image.reshape(-1, 3).sum(0, dtype=np.float64)
                    report.colour_pixels += image.shape[0] * image.shape[1]
            done += 1
            if progress and (done % 500 == 0 or done == total):
                progress(done, total)
        report.pixels[split], report.void[split] = counts, void
    if report.classes and splits[0] in report.pixels:
        absent = [name for name, count in zip(report.classes, report.pixels[splits[0]])
                  if count == 0]
        if absent:
            report.warnings.append(f'no {splits[0]} pixel is of class {", ".join(absent)}: '
                                   f'the net cannot learn {"it" if len(absent) == 1 else "them"}')
    if report.layout:
        listed = set(seen)
        unlisted = [i for i in dataset.index() if i not in listed]
        if unlisted:
            report.warnings.append(f'{len(unlisted)} image(s) in {dataset.images} are in no '
                                   f'split (e.g. {sorted(unlisted)[0]})')
    return report


def write_json(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    tmp.write_text(json.dumps(data, indent=1) + '\n')
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('data', type=Path, nargs='?', metavar='DIR', help='the dataset folder')
    parser.add_argument('--classes', type=Path, metavar='FILE',
                        help=f'the class list (default DIR/{CLASSES_FILE})')
    parser.add_argument('--splits', nargs='+', default=['train', 'val'], metavar='SPLIT',
                        help='the splits to check, training split first (default: train val)')
    parser.add_argument('--model', metavar='NAME',
                        help='check the dataset of a model declared by solve/new_model.py, '
                        'with its splits and classes')
    parser.add_argument('--json', type=Path, metavar='FILE',
                        help='also write the findings as JSON (only when there is no error)')
    args = parser.parse_args(argv)
    declared = None
    if args.model:
        from fcn.paths import data_root
        from models import registry
        try:
            declared = registry.load().declared_model(args.model)
        except registry.UnknownModel as error:
            raise UsageError(str(error)) from None
        args.data = data_root() / declared.data_dir
        args.splits = [declared.train_split, declared.val_split]
    if args.data is None:
        parser.error('give the dataset folder (make data-check DATA=DIR)')

    def progress(done, total):
        print(f'check: {done}/{total} images', file=sys.stderr, flush=True)

    report = check(args.data, args.classes, tuple(args.splits), progress,
                   declared.classes if declared else None)
    listed = args.data / CLASSES_FILE
    if declared and listed.is_file():
        try:
            names = read_classes(listed)
        except DatasetError as error:
            report.errors.append(error)
        else:
            if names != list(declared.classes):
                report.errors.append(DatasetError(
                    listed, f'lists {", ".join(names)}, but {declared.path} was declared for '
                    f'{", ".join(declared.classes)}', f'declare the model again '
                    f'(solve/new_model.py {declared.name} ... --force)', kind='classes changed'))
    ready = (f'make {declared.name}' if declared else
             f'solve/new_model.py NAME --data {args.data} --from ...')
    for line in report.lines(ready):
        print(line)
    if not report.ok:
        return 1
    if args.json:
        write_json(args.json, report.summary())
    return 0


if __name__ == '__main__':
    run_command(main)
