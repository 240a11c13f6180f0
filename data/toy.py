"""The embedded toy set: a small semantic segmentation problem generated from a seed.

`make demo` runs the whole FCN method on it in minutes on a CPU. Every image is a scene of
shapes on a textured background. The five object classes are told apart by shape and by
texture, never by colour (every colour is drawn at random):

    disc     an ellipse, flat colour            square   a rotated rectangle, flat colour
    checker  a rotated rectangle, checkerboard  ring     an annulus with a thin wall
    cross    two thin crossing bars

so disc/square differ only by shape, square/checker only by texture, and ring and cross are
mostly thin parts. Objects come at several scales, from a few pixels to half the image, so
the finer strides of FCN-16s and FCN-8s have something to gain over FCN-32s.

Two views are written under the output folder (the data root's `toy/` by default):

- segmentation, in the PASCAL VOC layout read by `layers.voc.VOCSegDataLayer`:
  `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png` (palette PNG, class indices),
  `ImageSets/Segmentation/{train,val}.txt`;
- classification, for pretraining the toy classifier as VGG16 was pretrained on ILSVRC
  (read by `layers.toy.ToyClassDataLayer`): `classification/JPEGImages/<id>.jpg` and
  `classification/{train,val}.txt` with lines `<id> <class>`, where the class (1-5, the
  segmentation class ids) is that of the object at the centre of the image; smaller
  distractors of other classes lie around it, as objects crowd the edges of ILSVRC photos.

Each image is drawn from its own random stream keyed by (seed, view, split, index), so the
set is the same on every machine and for any worker count, and `toy.json`, written last,
records the parameters: a finished set is recognised and not generated again.

    python data/toy.py [--out DIR] [--seed S] [--train N] [--val N] ...
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

CLASS_NAMES = ('background', 'disc', 'square', 'checker', 'ring', 'cross')
NUM_CLASSES = len(CLASS_NAMES)
SPLITS = ('train', 'val')
META_NAME = 'toy.json'
# Streams of the two views never overlap: the view and split are part of each image's key.
VIEW_KEYS = {'segmentation': 0, 'classification': 1}
SPLIT_KEYS = {'train': 0, 'val': 1}

DEFAULTS = dict(
    seed=1,
    # Segmentation scenes: 2-5 objects of radius 8-44 px on 128x128.
    seg_size=128, seg_train=1000, seg_val=120, min_objects=2, max_objects=5,
    min_radius=8.0, max_radius=44.0,
    # Classification images: 224x224 as VGG16's input (pool5 is then 7x7, the size that
    # the FCN's 7x7 fc6 convolution is coerced from), with 3-6 objects of one class.
    cls_size=224, cls_train=4000, cls_val=500, cls_min_objects=3, cls_max_objects=6,
    cls_min_radius=12.0, cls_max_radius=48.0,
    background_grain=16.0, jpeg_quality=95,
)


def voc_palette(num_entries=256):
    """The PASCAL VOC colour map: class i's colour spreads the bits of i over R, G, B."""
    palette = np.zeros((num_entries, 3), np.uint8)
    for index in range(num_entries):
        code, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((code >> 0) & 1) << (7 - bit)
            g |= ((code >> 1) & 1) << (7 - bit)
            b |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette[index] = r, g, b
    return palette


def image_rng(seed, view, split, index):
    return np.random.default_rng([seed, VIEW_KEYS[view], SPLIT_KEYS[split], index])


# ---- drawing -------------------------------------------------------------------------

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


def shape_mask(cls, shape, center, radius, angle, rng):
    """Boolean mask of one object of class `cls`, at most `radius` pixels from its centre."""
    def polygon(points, turn=0.0):
        return polygon_mask(shape, rotated(points, center, angle + turn))

    if cls == 'disc':
        return polygon(ellipse_points(radius, radius * rng.uniform(0.7, 1.0)))
    if cls in ('square', 'checker'):
        # Half-sides of 0.8 r give about the disc's area.
        return polygon(rectangle_points(0.8 * radius, 0.8 * radius * rng.uniform(0.7, 1.0)))
    if cls == 'ring':
        aspect = rng.uniform(0.8, 1.0)
        inner = radius - max(2.0, radius * rng.uniform(0.2, 0.35))
        return (polygon(ellipse_points(radius, radius * aspect))
                & ~polygon(ellipse_points(inner, inner * aspect)))
    if cls == 'cross':
        bar = rectangle_points(radius, max(1.0, radius * rng.uniform(0.1, 0.2)))
        return polygon(bar) | polygon(bar, np.pi / 2)
    raise ValueError(f'unknown toy class {cls!r}')


def random_color(rng, avoid, min_distance=80.0):
    """A random RGB colour at least `min_distance` from every colour in `avoid`."""
    for _ in range(100):
        color = rng.uniform(0, 255, 3)
        if all(np.linalg.norm(color - other) >= min_distance for other in avoid):
            return color
    return color


def smooth_upsampler(size, knots):
    """(size, knots) matrix of linear interpolation weights from `knots` evenly spaced
    values to `size` pixels: M @ coarse @ M.T upsamples a knots x knots grid smoothly."""
    positions = np.linspace(0, knots - 1, size)
    return np.maximum(0, 1 - np.abs(positions[:, None] - np.arange(knots)[None, :])).astype(np.float32)


def background(size, rng, grain):
    """A two-colour gradient under smooth blotches and a grain of standard deviation
    `grain`: no single colour describes it, and its grain tells it from the objects'
    clean fills at any point."""
    axis = np.linspace(0, 1, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * axis[None, :] + np.sin(angle) * axis[:, None]
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    start, end = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    upsample = smooth_upsampler(size, 5)
    coarse = rng.normal(0, 20, (3, 5, 5)).astype(np.float32)
    blotches = (upsample @ coarse @ upsample.T).transpose(1, 2, 0)
    speckle = grain * rng.standard_normal((size, size, 1), dtype=np.float32)
    return start + ramp[..., None] * (end - start) + blotches + speckle


def texture(cls, shape, center, angle, rng, under):
    """The object's fill over a (height, width) window (the caller masks it): a colour far
    from `under`, the mean colour it is painted over, and for checkers a second colour in a
    checkerboard turned with the object."""
    color = random_color(rng, [under])
    if cls != 'checker':
        return color
    second = random_color(rng, [color], min_distance=70.0)
    cell = rng.uniform(3.0, 5.0)
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    dx, dy = xs - center[0], ys - center[1]
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    odd = (np.floor(u / cell) + np.floor(v / cell)).astype(int) % 2 == 1
    return np.where(odd[..., None], color, second)


def log_uniform(rng, low, high):
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def paint(image, label, cls_id, center, radius, rng):
    """Draw one object into `image` and `label` in place, working in the window that
    bounds it."""
    height, width = label.shape
    x0, y0 = (max(0, int(c - radius) - 1) for c in center)
    x1, y1 = min(width, int(center[0] + radius) + 2), min(height, int(center[1] + radius) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    window = (slice(y0, y1), slice(x0, x1))
    local = (y1 - y0, x1 - x0)
    local_center = np.asarray(center) - (x0, y0)
    cls, angle = CLASS_NAMES[cls_id], rng.uniform(0, 2 * np.pi)
    mask = shape_mask(cls, local, local_center, radius, angle, rng)
    if mask.any():
        patch = image[window]
        fill = texture(cls, local, local_center, angle, rng, under=patch[mask].mean(axis=0))
        patch[mask] = fill[mask] if np.ndim(fill) == 3 else fill
        label[window][mask] = cls_id


def finish(image, rng):
    """Sensor noise, then 8 bits."""
    noisy = image + 5 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def covered_fraction(label, center, radius):
    """How much of the disc (center, radius), the object's bounding disc, is already
    taken by objects."""
    ys, xs = np.ogrid[0:label.shape[0], 0:label.shape[1]]
    footprint = (xs - center[0]) ** 2 + (ys - center[1]) ** 2 <= radius ** 2
    return float((label[footprint] > 0).mean()) if footprint.any() else 0.0


def scatter(image, label, classes, min_radius, max_radius, rng):
    """Paint one object of each class id in `classes`, at log-uniform radii and places
    drawn so that an object hides little of those drawn before it."""
    size = label.shape[0]
    for cls_id in classes:
        for _ in range(10):
            radius = log_uniform(rng, min_radius, max_radius)
            center = rng.uniform(0.1 * size, 0.9 * size, 2)
            if covered_fraction(label, center, radius) <= 0.25:
                break
        paint(image, label, int(cls_id), center, radius, rng)


def segmentation_scene(rng, p):
    """(image HxWx3 uint8 RGB, label HxW uint8): min_objects to max_objects objects of
    random classes."""
    size = p['seg_size']
    image = background(size, rng, p['background_grain'])
    label = np.zeros((size, size), np.uint8)
    count = rng.integers(p['min_objects'], p['max_objects'] + 1)
    scatter(image, label, rng.integers(1, NUM_CLASSES, count), p['min_radius'], p['max_radius'],
            rng)
    return finish(image, rng), label


def classification_scene(rng, p, cls_id):
    """An image of cls_min_objects to cls_max_objects objects, all of class `cls_id`:
    every part of the image that is not background is evidence of the class, so the
    classifier learns the local shape and texture cues that dense prediction needs."""
    size = p['cls_size']
    image = background(size, rng, p['background_grain'])
    label = np.zeros((size, size), np.uint8)
    count = rng.integers(p['cls_min_objects'], p['cls_max_objects'] + 1)
    scatter(image, label, [cls_id] * count, p['cls_min_radius'], p['cls_max_radius'], rng)
    return finish(image, rng)


# ---- writing -------------------------------------------------------------------------

def save_jpeg(path, rgb, quality):
    Image.fromarray(rgb).save(path, quality=quality)


def save_label(path, label, palette):
    png = Image.fromarray(label)
    png.putpalette(palette.ravel().tolist())  # turns the 'L' image into 'P', values kept
    png.save(path)


def image_id(view, split, index):
    return f'{split}_{index:05d}' if view == 'segmentation' else f'cls_{split}_{index:05d}'


def write_segmentation(root, p, progress):
    palette = voc_palette()
    for folder in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        ids = []
        for index in range(p[f'seg_{split}']):
            name = image_id('segmentation', split, index)
            image, label = segmentation_scene(image_rng(p['seed'], 'segmentation', split, index), p)
            save_jpeg(root / 'JPEGImages' / f'{name}.jpg', image, p['jpeg_quality'])
            save_label(root / 'SegmentationClass' / f'{name}.png', label, palette)
            ids.append(name)
            progress()
        (root / 'ImageSets/Segmentation' / f'{split}.txt').write_text('\n'.join(ids) + '\n')


def write_classification(root, p, progress):
    """Classes are dealt in turn (index mod 5) so that every split is balanced."""
    folder = root / 'classification'
    (folder / 'JPEGImages').mkdir(parents=True, exist_ok=True)
    labels = []
    for split in SPLITS:
        ids = []
        for index in range(p[f'cls_{split}']):
            name = image_id('classification', split, index)
            cls_id = 1 + index % (NUM_CLASSES - 1)
            image = classification_scene(image_rng(p['seed'], 'classification', split, index),
                                         p, cls_id)
            save_jpeg(folder / 'JPEGImages' / f'{name}.jpg', image, p['jpeg_quality'])
            ids.append(name)
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
    """Write the toy set to `out` unless it already holds one with the same parameters.

    The set is written to a sibling temporary folder and moved into place at the end, so an
    interrupted run leaves `out` as it was. Returns the parameters (the `toy.json` record).
    """
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError(f'unknown toy set parameters: {sorted(unknown)}')
    p = {**DEFAULTS, **overrides}
    out = Path(out)
    meta = read_meta(out)
    if meta is not None and meta['parameters'] == p and meta['generator'] == generator_digest():
        return meta
    if out.exists() and meta is None:
        raise SystemExit(f'toy: {out} exists but holds no {META_NAME}: not a toy set; '
                         'move it away or pick another --out')

    total = sum(p[f'{view}_{split}'] for view in ('seg', 'cls') for split in SPLITS)
    done = 0

    def progress():
        nonlocal done
        done += 1
        if done % 500 == 0 or done == total:
            print(f'toy: {done}/{total} images', file=sys.stderr, flush=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f'.{out.name}.tmp-{os.getpid()}')
    shutil.rmtree(staging, ignore_errors=True)
    write_segmentation(staging, p, progress)
    write_classification(staging, p, progress)
    meta = {'parameters': p, 'generator': generator_digest(), 'classes': list(CLASS_NAMES)}
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
    from data import data_root
    return data_root() / 'toy'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=(
        'Writes the VOC-layout segmentation view and the classification view; '
        'does nothing when OUT already holds a set made with the same parameters.'))
    parser.add_argument('--out', type=Path, default=None,
                        help='output folder (default: $FCN_DATA_DIR/toy, else data/toy)')
    for key, value in DEFAULTS.items():
        parser.add_argument('--' + key.replace('_', '-'), type=type(value), default=value,
                            help=f'(default {value})')
    args = vars(parser.parse_args(argv))
    out = args.pop('out') or default_out()
    meta = generate(out, **args)
    p = meta['parameters']
    print(f'toy: {out}: {p["seg_train"]}+{p["seg_val"]} segmentation and '
          f'{p["cls_train"]}+{p["cls_val"]} classification images (seed {p["seed"]})')


if __name__ == '__main__':
    main()
