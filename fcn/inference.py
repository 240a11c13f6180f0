"""Segmentation of single images by a deploy net (solve/infer.py is the command).

An image of any mode PIL reads is made 8-bit RGB (transparency over white, EXIF orientation
applied), optionally shrunk so that its longer side fits `max_side`, mean-subtracted in
the model's BGR order and forwarded at its own size, as the reference's nets were; the
scores are brought back to the image's size (bilinear) before the argmax. `infer_files`
writes a label PNG (the dataset's palette, class ids as pixel values), an overlay with a
legend of the classes present and, if asked, the softmax probabilities of every image.
"""
import importlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fcn import constants, pictures
from fcn.errors import UsageError
from fcn.progress import Progress

IMAGE_SUFFIXES = {'.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm',
                  '.pgm', '.pnm'}


def input_mean(spec):
    """The BGR mean the model's data layer subtracts (from the table, else the layer's)."""
    params = dict(spec.val_data.params) if spec.val_data else {}
    if 'mean' in params:
        return np.array(params['mean'], np.float32)
    module = spec.val_data.layer.rsplit('.', 1)[0]
    name = 'MEAN_HHA' if tuple(spec.modalities) == ('hha',) else 'MEAN_BGR'
    mean = constants.module_constant(module, name)
    if mean is None:  # not a literal: the layer module itself (which imports Caffe)
        mean = getattr(importlib.import_module(module), name)
    return np.asarray(mean, np.float32)


def single_input(runtime, model):
    """The deploy net's one 3-channel input (runtime: fcn.runtimes), or an error naming
    what it takes instead."""
    shapes = runtime.inputs
    if len(shapes) != 1 or next(iter(shapes.values())) != 3:
        described = ', '.join(f'{n} ({c} channels)' for n, c in shapes.items())
        raise UsageError(f'{model} takes {described}; infer.py feeds one 3-channel image '
                         f'per input and cannot run it')
    return next(iter(shapes))


def eight_bit(image):
    """A 16-bit or 32-bit integer grey image (modes I;16*, I) or a float one (F) as 8-bit
    grey: integers above 255 are taken as 16-bit (0..65535), floats up to 1 as 0..1."""
    values = np.asarray(image, np.float64)
    if image.mode == 'F':
        scale = 255.0 if values.max(initial=0) <= 1 else 1.0
    else:
        scale = 255 / 65535 if image.mode.startswith('I;16') or values.max(initial=0) > 255 \
            else 1.0
    return Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8), 'L')


def read_rgb(path):
    """HxWx3 uint8 RGB of an image file as a viewer shows it."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode.startswith('I') or image.mode == 'F':
                image = eight_bit(image)
            if image.mode in ('RGBA', 'LA', 'PA') or 'transparency' in image.info:
                rgba = image.convert('RGBA')
                image = Image.new('RGBA', rgba.size, 'white')
                image.alpha_composite(rgba)
            return np.array(image.convert('RGB'))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UsageError(f'cannot read image {path}: {e}') from e


def image_paths(arguments):
    """The image files named, a folder standing for the images in it, sorted; an error for
    a missing path, an empty folder, or two images of one name (their outputs would
    collide)."""
    paths = []
    for argument in map(Path, arguments):
        if argument.is_dir():
            found = sorted(p for p in argument.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f'{argument} holds no images '
                                 f'({", ".join(sorted(IMAGE_SUFFIXES))})')
            paths += found
        elif argument.is_file():
            paths.append(argument)
        else:
            raise UsageError(f'no such image or folder: {argument}')
    stems = {}
    for path in paths:
        if path.stem in stems:
            raise UsageError(f'{stems[path.stem]} and {path} would write the same outputs; '
                             f'segment them into separate --out folders')
        stems[path.stem] = path
    return paths


def fitted(rgb, max_side):
    """The image shrunk so that its longer side is at most max_side (None: as it is)."""
    height, width = rgb.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return rgb
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.array(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


def resized_scores(scores, shape):
    """Class scores (K x h x w) interpolated bilinearly to shape (H, W)."""
    if scores.shape[1:] == tuple(shape):
        return scores
    size = (shape[1], shape[0])
    return np.stack([np.array(Image.fromarray(channel, 'F').resize(size, Image.Resampling.BILINEAR))
                     for channel in scores.astype(np.float32)])


def softmax(scores):
    """Per-pixel class probabilities of K x H x W scores."""
    shifted = np.exp(scores - scores.max(0, keepdims=True))
    return (shifted / shifted.sum(0, keepdims=True)).astype(np.float32)


def segment(runtime, input_name, rgb, mean, heads, max_side=None):
    """Class scores per pixel of one HxWx3 RGB image at its own size, by a runtime of
    fcn.runtimes: {head label: K x H x W float32}."""
    seen = fitted(rgb, max_side)
    bgr = seen[:, :, ::-1].astype(np.float32) - mean
    outputs = runtime.forward({input_name: bgr.transpose(2, 0, 1)[np.newaxis]})
    scores = {}
    for head in heads:
        if head.score not in outputs:
            raise UsageError(f'the net has no output {head.score} (its outputs: '
                             f'{", ".join(outputs)}): give the deploy net of the model')
        head_scores = outputs[head.score][0]
        if head_scores.shape[1:] != seen.shape[:2]:
            raise UsageError(f'{head.score} is {head_scores.shape[1]}x{head_scores.shape[2]} '
                             f'for a {seen.shape[0]}x{seen.shape[1]} image: not a deploy FCN')
        scores[head.label] = resized_scores(np.array(head_scores), rgb.shape[:2])
    return scores


def infer_files(runtime, heads, mean, paths, out_dir, class_names=None, probabilities=False,
                max_side=None, label='infer'):
    """Segment image files into out_dir by a runtime of fcn.runtimes; returns the label
    PNGs written. class_names: {head label: names} for the legends (default: class
    numbers)."""
    input_name = single_input(runtime, 'the net')
    written = []
    progress = Progress(label, len(paths))
    for path in paths:
        rgb = read_rgb(path)
        runtime.adapt()
        scores = segment(runtime, input_name, rgb, mean, heads, max_side)
        for head in heads:
            head_scores = scores[head.label]
            pred = head_scores.argmax(0).astype(np.uint8)
            names = (class_names or {}).get(head.label) or \
                tuple(f'class {i}' for i in range(head.num_classes))
            stem = Path(path).stem + ('' if len(heads) == 1 else f'_{head.label}')
            out = Path(out_dir)
            pictures.save_label_png(out / f'{stem}.png', pred)
            pictures.save_rgb_png(out / f'{stem}_overlay.png',
                             pictures.overlay_with_legend(rgb, pred, names))
            if probabilities:
                save_probabilities(out / f'{stem}_prob.npz', softmax(head_scores), names)
            written.append(out / f'{stem}.png')
        progress.update()
    return written


def save_probabilities(path, prob, names):
    def write(tmp):
        with open(tmp, 'wb') as f:  # a file object: np.savez would append .npz to a name
            np.savez_compressed(f, prob=prob, classes=np.array(names))
    pictures.atomic_save(path, write)
