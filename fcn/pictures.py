"""Pictures of segmentations and of training: palette label PNGs, overlays, confusion
matrices and training curves. Every file is written atomically (tmp, then os.replace).
"""
import os
from pathlib import Path

import numpy as np
from PIL import Image

VOID = 255


def voc_palette():
    """The PASCAL VOC colour map as a (256, 3) uint8 array.

    Class i's colour spreads the bits of i over the three channels, most significant
    first (bit 0 of i to red, bit 1 to green, bit 2 to blue, then the next three bits one
    place lower), so neighbouring class ids get distinct colours; 255 (void) is cream.
    """
    ids = np.arange(256)
    palette = np.zeros((256, 3), np.uint8)
    for shift in range(8):
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1
            palette[:, channel] |= (bit << (7 - shift)).astype(np.uint8)
    return palette


PALETTE = voc_palette()


def atomic_save(path, save):
    """Call `save(tmp_path)`, then move the file into place, so readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}{path.suffix}')
    try:
        save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def label_image(label):
    """A palette ('P' mode) image of a 2-D class-id array: ids stay the pixel values."""
    label = np.asarray(label)
    if label.ndim != 2 or label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError(f'a label map must be 2-D with ids in 0..255, got shape '
                         f'{label.shape} and range {label.min()}..{label.max()}')
    height, width = label.shape
    image = Image.frombytes('P', (width, height), label.astype(np.uint8).tobytes())
    image.putpalette(PALETTE.tobytes())
    return image


def save_label_png(path, label):
    atomic_save(path, lambda tmp: label_image(label).save(tmp, format='PNG'))


def read_label_png(path):
    """Class ids of a label PNG: palette indices, or the grey value of an 'L' image."""
    with Image.open(path) as image:
        if image.mode not in ('P', 'L'):
            raise ValueError(f'{path}: a label PNG must be palette or greyscale '
                             f'(mode P or L), not mode {image.mode}')
        return np.array(image)


def overlay(image, label, alpha=0.5):
    """The image (HxWx3 uint8 RGB) with the label's colours blended in; void stays clear."""
    colours = PALETTE[label].astype(np.float32)
    blend = np.where((label != VOID)[..., None],
                     (1 - alpha) * image.astype(np.float32) + alpha * colours,
                     image.astype(np.float32))
    return blend.round().astype(np.uint8)


LEGEND_ROW = 18      # pixels per legend line
LEGEND_FONT = 12


def legend(label, class_names):
    """A white panel naming the classes present in `label`, each beside its palette
    colour, in class order."""
    from PIL import ImageDraw, ImageFont
    present = [int(c) for c in np.unique(label) if c != VOID]
    font = ImageFont.load_default(size=LEGEND_FONT)
    texts = [f'{c} {class_names[c]}' if c < len(class_names) else f'{c}' for c in present]
    text_width = max((int(font.getlength(text)) for text in texts), default=0)
    swatch = LEGEND_ROW - 6
    panel = Image.new('RGB', (swatch + text_width + 14, LEGEND_ROW * len(texts) + 4),
                      'white')
    draw = ImageDraw.Draw(panel)
    for row, (class_id, text) in enumerate(zip(present, texts)):
        top = 2 + row * LEGEND_ROW
        draw.rectangle([4, top + 3, 4 + swatch, top + 3 + swatch],
                       fill=tuple(int(v) for v in PALETTE[class_id]), outline='black')
        draw.text((swatch + 10, top + 2), text, fill='black', font=font)
    return np.array(panel)


def overlay_with_legend(image, label, class_names, alpha=0.5):
    """The overlay (at the image's own size, top left) with the legend of the classes
    present to its right, on white."""
    blended = overlay(image, label, alpha)
    panel = legend(label, class_names)
    height = max(blended.shape[0], panel.shape[0])
    sheet = np.full((height, blended.shape[1] + panel.shape[1], 3), 255, np.uint8)
    sheet[:blended.shape[0], :blended.shape[1]] = blended
    sheet[:panel.shape[0], blended.shape[1]:] = panel
    return sheet


def save_rgb_png(path, rgb):
    atomic_save(path, lambda tmp: Image.fromarray(rgb).save(tmp, format='PNG'))


def _figure(width, height):
    # Agg only: tools run headless, and the import stays here so scoring without plots
    # never pays for matplotlib.
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt, plt.figure(figsize=(width, height), dpi=100)


def save_confusion_png(path, hist, class_names):
    """The confusion matrix, each row normalised by its ground-truth pixel count."""
    hist = np.asarray(hist, np.float64)
    rows = hist.sum(1, keepdims=True)
    normalised = np.divide(hist, rows, out=np.zeros_like(hist), where=rows > 0)
    n = len(class_names)
    side = min(4 + 0.25 * n, 20)
    plt, fig = _figure(side, side)
    ax = fig.add_subplot(1, 1, 1)
    shown = ax.imshow(normalised, cmap='viridis', vmin=0, vmax=1)
    ax.set_xlabel('prediction')
    ax.set_ylabel('ground truth')
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    fontsize = 8 if n <= 40 else 5
    ax.set_xticklabels(class_names, rotation=90, fontsize=fontsize)
    ax.set_yticklabels(class_names, fontsize=fontsize)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label='fraction of the row')
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format='png'))
    plt.close(fig)


def save_curve_png(path, series, ylabel, title):
    """Plot `series` ({legend: (iterations, values)}) against iteration."""
    plt, fig = _figure(7, 4)
    ax = fig.add_subplot(1, 1, 1)
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name, marker='o' if len(x) < 30 else None)
    ax.set_xlabel('iteration')
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format='png'))
    plt.close(fig)


def save_bars_png(path, rows, series, xlabel, title, colours=None):
    """Horizontal grouped bars: for each row (top to bottom) one bar per series
    ({legend: [value or None per row]}), each labelled with its value; None draws nothing.
    colours: one matplotlib colour per series (default: matplotlib's cycle)."""
    plt, fig = _figure(9, 1.6 + 0.2 * len(rows) * max(2, len(series)))
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / len(series)
    for index, (name, values) in enumerate(series.items()):
        positions = [row + (index - (len(series) - 1) / 2) * height for row in range(len(rows))]
        shown = [(y, v) for y, v in zip(positions, values) if v is not None]
        style = {} if colours is None else dict(color=colours[index])
        bars = ax.barh([y for y, _ in shown], [v for _, v in shown], height=height, label=name,
                       **style)
        ax.bar_label(bars, labels=[f'{v:.1f}' for _, v in shown], padding=2, fontsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(True, axis='x', alpha=0.3)
    ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.5 / len(rows) - 0.03),
              ncol=len(series), fontsize=8, frameon=False)
    limit = max((v for values in series.values() for v in values if v is not None), default=1)
    ax.set_xlim(0, limit * 1.12)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format='png'))
    plt.close(fig)
