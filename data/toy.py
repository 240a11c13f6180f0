"""The embedded toy set: a small semantic segmentation problem generated from a seed.

`make demo` runs the whole FCN method on it in minutes on a CPU. Every image is a scene
of objects on a near-grey background; an object's class is its hue (red, yellow, green,
blue, purple), at a random saturation and brightness and shaded across the object, so a
class is told from a few pixels. Its outline is not the class's: each object takes one
of five outlines at random (ellipse, rectangle, triangle, ring, cross), from a dozen
pixels to most of the image across. Tracing them (thin ring walls, crossing bars, small
objects a few of FCN-32s's 32-pixel output cells wide) is what FCN-16s's and FCN-8s's
finer strides are for, the paper's skip claim at toy scale. The background (a ramp under
blotches and grain, tinted slightly) looks like no object.

Two views are written under the output folder (the data root's `toy/` by default):

- segmentation, in the PASCAL VOC layout read by `layers.voc.VOCSegDataLayer`:
  `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png` (palette PNG of class indices),
  `ImageSets/Segmentation/{train,val}.txt`, and `classes.txt` (a class name per line,
  background first): the format `data/check.py` reads a user's own dataset in. With
  `--layout simple` the same scenes go to that format's other layout (`images/<id>.jpg`,
  `masks/<id>.png`, `{train,val}.txt`); with `--classes N` only the first N hues occur
  (N + 1 classes with the background): the worked example of training on one's own data;
- classification, for pretraining the toy classifier as VGG16 was pretrained on ILSVRC
  (read by `layers.toy.ToyClassDataLayer`): `classification/JPEGImages/<id>.jpg`,
  `classification/{train,val}.txt` (ids) and `classification/labels.txt` (`<id> <class>`,
  the segmentation class ids 1-5). Each image shows several objects of its one class, so
  every object in it is evidence for the label: the classifier learns the local cues
  that dense prediction needs.

Each image is drawn from its own random stream keyed by (seed, view, split, index): the
set is the same on every machine. `toy.json`, written last, records the parameters and a
digest of this file; a finished set with both unchanged is not generated again.

    python data/toy.py [--out DIR] [--seed S] [--seg-train N] ...   (--help lists all)
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data.check import CLASSES_FILE, LAYOUTS
from fcn.errors import UsageError, run_command

CLASS_NAMES = ('background', 'red', 'yellow', 'green', 'blue', 'purple')
# Each object class's hue in degrees, 60 to 80 apart.
CLASS_HUES = (0.0, 60.0, 130.0, 210.0, 285.0)
SHAPES = ('ellipse', 'rectangle', 'triangle', 'ring', 'cross')
NUM_CLASSES = len(CLASS_NAMES)
SPLITS = ('train', 'val')
META_NAME = 'toy.json'
# The view and split are part of each image's random stream, so no two images share one.
VIEW_KEYS = {'segmentation': 0, 'classification': 1}
SPLIT_KEYS = {'train': 0, 'val': 1}

DEFAULTS = dict(
    seed=1,
    # Object classes (the first `classes` hues) and the segmentation view's folder layout,
    # 'voc' or 'simple' (data/check.py's two formats of a dataset of one's own).
    classes=len(CLASS_HUES), layout='voc',
    # Segmentation scenes: 1-4 objects of radius 12-56 px on 128x128.
    seg_size=128, seg_train=1000, seg_val=120, min_objects=1, max_objects=4,
    min_radius=12.0, max_radius=56.0,
    # Classification images: 128x128, so that the toy classifier's pool5 is 4x4, the
    # kernel of the toy FCNs' fc6 (models/specs.py); 2-5 objects of the image's class.
    cls_size=128, cls_train=6000, cls_val=500, cls_min_objects=2, cls_max_objects=5,
    cls_min_radius=12.0, cls_max_radius=34.0,
    # Object colours: the class's hue +- hue_jitter degrees, saturation and value from
    # their minimum to 1, brightness shaded by up to +-shading/2 across the object.
    hue_jitter=12.0, min_saturation=0.5, min_value=0.45, shading=0.3,
    # The background: grey with grain (standard deviation), tinted up to this saturation.
    background_grain=16.0, background_saturation=0.15, sensor_noise=5.0, jpeg_quality=95,
)


def voc_palette(num_entries=256):
    """The PASCAL VOC colour map: class i's colour spreads the bits of i over R, G, B,
    most significant first."""
    palette = np.zeros((num_entries, 3), np.uint8)
    for index in range(num_entries):
        code, rgb = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((code >> channel) & 1) << (7 - bit)
            code >>= 3
        palette[index] = rgb
    return palette


def image_rng(seed, view, split, index):
    return np.random.default_rng([seed, VIEW_KEYS[view], SPLIT_KEYS[split], index])


def log_uniform(rng, low, high):
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


# ---- shapes ------------------------------------------------------------------------

def polygon_mask(shape, points):
    """Boolean (height, width) mask of the polygon with (N, 2) x, y vertices."""
    canvas = Image.new('L', (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=1)
    return np.asarray(canvas, bool)


def rotated(points, center, angle):
    """Rotate (N, 2) offsets by `angle` radians and move them to `center`."""
    cos, sin = np.cos(angle), np.sin(angle)
    return points @ np.array([[cos, sin], [-sin, cos]]) + center


def ellipse_points(rx, ry, count=48):
    t = np.linspace(0, 2 * np.pi, count, endpoint=False)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def rectangle_points(hx, hy):
    return np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])


def shape_mask(shape_name, shape, center, radius, angle, rng):
    """Boolean mask of one `shape_name` outline, at most `radius` pixels from its centre."""
    def polygon(points, turn=0.0):
        return polygon_mask(shape, rotated(points, center, angle + turn))

    if shape_name == 'ellipse':
        return polygon(ellipse_points(radius, radius * rng.uniform(0.5, 1.0)))
    if shape_name == 'rectangle':
        return polygon(rectangle_points(0.8 * radius, 0.8 * radius * rng.uniform(0.4, 1.0)))
    if shape_name == 'triangle':
        corners = np.linspace(0, 2 * np.pi, 3, endpoint=False)
        return polygon(radius * np.stack([np.cos(corners), np.sin(corners)], axis=1))
    if shape_name == 'ring':
        aspect = rng.uniform(0.8, 1.0)
        inner = radius - max(4.0, radius * rng.uniform(0.25, 0.4))
        return (polygon(ellipse_points(radius, radius * aspect))
                & ~polygon(ellipse_points(inner, inner * aspect)))
    if shape_name == 'cross':
        bar = rectangle_points(radius, max(3.0, radius * rng.uniform(0.15, 0.25)))
        return polygon(bar) | polygon(bar, np.pi / 2)
    raise ValueError(f'unknown toy shape {shape_name!r}')


# ---- colours -----------------------------------------------------------------------

def hsv_to_rgb(hue, saturation, value):
    """RGB (0-255, last axis) of HSV colours; hue in degrees, the rest 0-1, broadcasting."""
    hue = np.asarray(hue, np.float32) % 360.0
    channel = (np.array([5.0, 3.0, 1.0], np.float32) + hue[..., None] / 60.0) % 6.0
    ramp = np.clip(np.minimum(channel, 4.0 - channel), 0.0, 1.0)
    value, saturation = np.asarray(value)[..., None], np.asarray(saturation)[..., None]
    return 255.0 * value * (1.0 - saturation * ramp)


def linear_upsampler(size, knots):
    """(size, knots) matrix of linear interpolation weights from `knots` evenly spaced
    values to `size` pixels: M @ coarse @ M.T upsamples a knots x knots grid."""
    positions = np.linspace(0, knots - 1, size)
    weights = 1 - np.abs(positions[:, None] - np.arange(knots)[None, :])
    return np.maximum(0, weights).astype(np.float32)


def background(size, rng, p):
    """A near-grey ramp between two random levels under smooth blotches and grain: no one
    level or tint describes it, and its colours stay far from any object's."""
    axis = np.linspace(0, 1, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * axis[None, :] + np.sin(angle) * axis[:, None]
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    start, end = rng.uniform(0, 255, 2)
    upsample = linear_upsampler(size, 5)
    blotches = upsample @ rng.normal(0, 20, (5, 5)).astype(np.float32) @ upsample.T
    grains = p['background_grain'] * rng.standard_normal((size, size), dtype=np.float32)
    grey = start + ramp * (end - start) + blotches + grains
    tint = hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, p['background_saturation']), 1.0)
    return grey[..., None] * (tint / 255.0)


def fill(cls_id, shape, center, angle, rng, p):
    """The object's colour over a (height, width) window: its class's hue (give or take
    `hue_jitter` degrees) at a random saturation and brightness, shaded across the object."""
    hue = CLASS_HUES[cls_id - 1] + rng.uniform(-p['hue_jitter'], p['hue_jitter'])
    colour = hsv_to_rgb(hue, rng.uniform(p['min_saturation'], 1.0),
                        rng.uniform(p['min_value'], 1.0))
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    across = np.cos(angle) * (xs - center[0]) + np.sin(angle) * (ys - center[1])
    shade = 1.0 + p['shading'] * across / max(shape)
    return colour * shade[..., None]


# ---- scenes ------------------------------------------------------------------------

def paint(image, label, cls_id, center, radius, rng, p):
    """Draw one object into `image` and `label` in place, working in the window that
    bounds it."""
    height, width = label.shape
    x0, y0 = (max(0, int(c - radius) - 1) for c in center)
    x1, y1 = min(width, int(center[0] + radius) + 2), min(height, int(center[1] + radius) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    window = (slice(y0, y1), slice(x0, x1))
    local_shape, local_center = (y1 - y0, x1 - x0), np.asarray(center) - (x0, y0)
    angle = rng.uniform(0, 2 * np.pi)
    mask = shape_mask(SHAPES[rng.integers(len(SHAPES))], local_shape, local_center, radius,
                      angle, rng)
    if mask.any():
        image[window][mask] = fill(cls_id, local_shape, local_center, angle, rng, p)[mask]
        label[window][mask] = cls_id


def covered_fraction(label, center, radius):
    """How much of the disc (center, radius), an object's bounding disc, objects already
    take."""
    ys, xs = np.ogrid[0:label.shape[0], 0:label.shape[1]]
    footprint = (xs - center[0]) ** 2 + (ys - center[1]) ** 2 <= radius ** 2
    return float((label[footprint] > 0).mean()) if footprint.any() else 0.0


def scatter(image, label, classes, min_radius, max_radius, rng, p):
    """Paint one object of each class id in `classes` at a log-uniform radius, placed (in
    up to ten tries) where it hides little of the objects drawn before it."""
    size = label.shape[0]
    for cls_id in classes:
        for _ in range(10):
            radius = log_uniform(rng, min_radius, max_radius)
            center = rng.uniform(0.1 * size, 0.9 * size, 2)
            if covered_fraction(label, center, radius) <= 0.25:
                break
        paint(image, label, int(cls_id), center, radius, rng, p)


def finish(image, rng, noise):
    """Sensor noise and 8 bits."""
    noisy = image + noise * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def segmentation_scene(rng, p):
    """(image HxWx3 uint8 RGB, label HxW uint8): min_objects to max_objects objects of
    random classes."""
    size = p['seg_size']
    image = background(size, rng, p)
    label = np.zeros((size, size), np.uint8)
    count = rng.integers(p['min_objects'], p['max_objects'] + 1)
    scatter(image, label, rng.integers(1, p['classes'] + 1, count), p['min_radius'],
            p['max_radius'], rng, p)
    return finish(image, rng, p['sensor_noise']), label


def classification_scene(rng, p, cls_id):
    """An image (HxWx3 uint8 RGB) of cls_min_objects to cls_max_objects objects, all of
    class `cls_id`."""
    size = p['cls_size']
    image = background(size, rng, p)
    label = np.zeros((size, size), np.uint8)
    count = rng.integers(p['cls_min_objects'], p['cls_max_objects'] + 1)
    scatter(image, label, [cls_id] * count, p['cls_min_radius'], p['cls_max_radius'], rng, p)
    return finish(image, rng, p['sensor_noise'])


# ---- writing -----------------------------------------------------------------------

def save_jpeg(path, rgb, quality):
    Image.fromarray(rgb).save(path, quality=quality)


def save_label(path, label, palette):
    png = Image.fromarray(label)
    png.putpalette(palette.ravel().tolist())  # the 'L' image becomes 'P', values kept
    png.save(path)


def class_names(p):
    return CLASS_NAMES[:p['classes'] + 1]


def write_segmentation(root, p, progress):
    palette = voc_palette()
    layout = LAYOUTS[p['layout']]
    folders = {key: root / layout[key] for key in ('images', 'labels', 'splits')}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        ids = [f'{split}_{index:05d}' for index in range(p[f'seg_{split}'])]
        for index, name in enumerate(ids):
            image, label = segmentation_scene(image_rng(p['seed'], 'segmentation', split, index),
                                              p)
            save_jpeg(folders['images'] / f'{name}.jpg', image, p['jpeg_quality'])
            save_label(folders['labels'] / f'{name}.png', label, palette)
            progress()
        (folders['splits'] / f'{split}.txt').write_text('\n'.join(ids) + '\n')
    (root / CLASSES_FILE).write_text('\n'.join(class_names(p)) + '\n')


def write_classification(root, p, progress):
    """Classes are dealt in turn (1, 2, ..., 5, 1, ...), so every split is balanced."""
    folder = root / 'classification'
    (folder / 'JPEGImages').mkdir(parents=True, exist_ok=True)
    labels = []
    for split in SPLITS:
        ids = [f'cls_{split}_{index:05d}' for index in range(p[f'cls_{split}'])]
        for index, name in enumerate(ids):
            cls_id = 1 + index % p['classes']
            image = classification_scene(image_rng(p['seed'], 'classification', split, index),
                                         p, cls_id)
            save_jpeg(folder / 'JPEGImages' / f'{name}.jpg', image, p['jpeg_quality'])
            labels.append(f'{name} {cls_id}')
            progress()
        (folder / f'{split}.txt').write_text('\n'.join(ids) + '\n')
    (folder / 'labels.txt').write_text('\n'.join(labels) + '\n')


def generator_digest():
    """The SHA-256 of this file: a set drawn by other code is drawn again."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def read_meta(root):
    try:
        return json.loads((Path(root) / META_NAME).read_text())
    except FileNotFoundError:
        return None


def generate(out, **overrides):
    """Write the toy set to `out` unless it already holds one made with the same parameters
    and code; returns its `toy.json` record.

    The set is written to a sibling temporary folder and moved into place at the end, so an
    interrupted run leaves `out` as it was.
    """
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError(f'unknown toy set parameters: {", ".join(sorted(unknown))}')
    p = {**DEFAULTS, **overrides}
    if not 1 <= p['classes'] <= len(CLASS_HUES):
        raise UsageError(f'toy: --classes {p["classes"]}: from 1 to {len(CLASS_HUES)} object '
                         f'classes (one hue each)')
    if p['layout'] not in LAYOUTS:
        raise UsageError(f'toy: --layout {p["layout"]}: one of {", ".join(LAYOUTS)}')
    out = Path(out)
    meta = read_meta(out)
    if meta is not None and meta['parameters'] == p and meta['generator'] == generator_digest():
        return meta
    if out.exists() and meta is None:
        raise UsageError(f'toy: {out} exists but holds no {META_NAME}, so it is not a toy '
                         f'set; move it away or give another --out')

    total = sum(p[f'{view}_{split}'] for view in ('seg', 'cls') for split in SPLITS)
    done = 0

    def step():
        nonlocal done
        done += 1
        if done % 1000 == 0 or done == total:
            print(f'toy: {done}/{total} images', file=sys.stderr, flush=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f'.{out.name}.tmp-{os.getpid()}')
    shutil.rmtree(staging, ignore_errors=True)
    write_segmentation(staging, p, step)
    if p['cls_train'] or p['cls_val']:  # a set of one's own has no classification view
        write_classification(staging, p, step)
    meta = {'parameters': p, 'generator': generator_digest(), 'classes': list(class_names(p))}
    (staging / META_NAME).write_text(json.dumps(meta, indent=1) + '\n')
    if out.exists():
        retired = out.with_name(f'.{out.name}.old-{os.getpid()}')
        os.replace(out, retired)
        os.replace(staging, out)
        shutil.rmtree(retired)
    else:
        os.replace(staging, out)
    return meta


def default_out():
    from fcn.paths import data_root
    return data_root() / 'toy'


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path,
                        help='output folder (default: <data root>/toy, the data root being '
                        '$FCN_DATA_DIR, else data/)')
    for key, value in DEFAULTS.items():
        parser.add_argument('--' + key.replace('_', '-'), type=type(value), default=value,
                            metavar=type(value).__name__.upper(), help=f'(default {value})')
    args = vars(parser.parse_args(argv))
    out = args.pop('out') or default_out()
    meta = generate(out, **args)
    p = meta['parameters']
    print(f'toy: {out}: {p["seg_train"]}+{p["seg_val"]} segmentation and '
          f'{p["cls_train"]}+{p["cls_val"]} classification images (seed {p["seed"]})')


if __name__ == '__main__':
    run_command(main)
