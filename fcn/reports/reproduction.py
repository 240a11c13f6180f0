"""The reproduction table: each FCN's published mean IU beside the released weights'
score here and your own run's (solve/report.py writes it)."""
import json
from pathlib import Path

from fcn import paths, pictures, runs

COLUMNS = ('model', 'published mean IU', 'published in', 'released weights, here',
           'your run', 'released - published')


def mean_iu(path, spec):
    """(mean IU in percent, split, images) of a score.json, or None if there is none."""
    if not Path(path).is_file():
        return None
    document = json.loads(Path(path).read_text())
    head = document if len(spec.heads) == 1 else document[spec.heads[0].label]
    if head.get('mean_iu') is None:
        return None
    return 100 * head['mean_iu'], document.get('split', spec.val_split), head.get('n_images')


def gather(runs_dir=None):
    """One row per model: the reference and paper models, and any other model with a
    scored run of your own (the toy nets after `make demo`, the models you declared)."""
    from models import registry
    from data.weights import PUBLISHED_SCORES
    runs_dir = runs_dir or paths.RUNS_DIR
    rows = []
    for name, spec in registry.load().models.items():
        if spec.task != 'segmentation':
            continue
        released = mean_iu(runs.released_folder(name, runs_dir).score(), spec)
        own = mean_iu(runs.run_folder(name, runs_dir).score(), spec)
        published = PUBLISHED_SCORES.get(name)
        if spec.dataset in ('toy', 'folder') and own is None:
            continue
        rows.append(dict(model=name, split=spec.val_split, published=published,
                         released=released, own=own))
    return rows


def scored(score):
    if score is None:
        return '-'
    value, split, images = score
    return f'{value:.1f} ({split}, {images} images)' if images else f'{value:.1f} ({split})'


def markdown(rows):
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|---|---:|---|---:|---:|---:|']
    for row in rows:
        published = row['published']
        difference = '-' if published is None or row['released'] is None else \
            f'{row["released"][0] - published.mean_iu:+.1f}'
        lines.append('| ' + ' | '.join((
            row['model'],
            '-' if published is None else f'{published.mean_iu:.1f} ({published.split})',
            '-' if published is None else published.where,
            scored(row['released']), scored(row['own']), difference)) + ' |')
    sentences = []
    for row in rows:
        if row['released'] is not None:
            value, split, _ = row['released']
            published = row['published']
            said = 'no score is published' if published is None else \
                f'{published.where} says {published.mean_iu:.1f}'
            sentences.append(f'- {row["model"]}: the released weights score {value:.1f} mean '
                             f'IU on {split} here; {said}.')
    return '\n'.join(lines + ([''] + sentences if sentences else [])) + '\n'


def plot(path, rows):
    pictures.save_bars_png(
        path, [row['model'] for row in rows],
        {'published': [row['published'] and row['published'].mean_iu for row in rows],
         'released weights, here': [row['released'] and row['released'][0] for row in rows],
         'your run': [row['own'] and row['own'][0] for row in rows]},
        'mean IU (%)', 'FCN reproduction: published, released weights, your runs',
        colours=('#9e9e9e', '#1f77b4', '#ff7f0e'))
