"""Short runs (`make MODEL STEPS=N VAL_IMAGES=N`): every stage of the chain for N
iterations, validated and scored on the first images, in a folder of their own so that a
full run never resumes from or starts from their weights."""
import json
import os
import subprocess
import sys

import pytest

from fcn.paths import REPO


def make(*args, env=None, dry_run=False):
    command = ['make', '--no-print-directory'] + (['-n'] if dry_run else []) + list(args)
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


def commands(output, tool):
    lines = output.replace('\\\n', ' ').splitlines()  # recipes continued with a backslash
    return [line for line in lines if f'solve/{tool}.py' in line]


def test_a_short_run_is_kept_apart_and_cut_short():
    result = make('voc-fcn8s', 'STEPS=20', 'VAL_IMAGES=5', dry_run=True)
    assert result.returncode == 0, result.stderr
    trains = commands(result.stdout, 'solve')
    assert [line.split()[2] for line in trains] == ['voc-fcn32s', 'voc-fcn16s', 'voc-fcn8s']
    for line in trains:
        assert '--iterations 20 --test-every 20 --val-images 5 --init-from final' in line
    score, = commands(result.stdout, 'score')
    assert '--json runs/short/steps20-val5/voc-fcn8s/score.json' in score
    assert score.endswith('--images 5')
    surgery, = commands(result.stdout, 'surgery')
    assert '--out runs/short/steps20-val5/weights/vgg16-fcn.caffemodel' in surgery


def test_a_full_run_never_touches_short_runs():
    result = make('voc-fcn8s', dry_run=True)
    assert result.returncode == 0, result.stderr
    assert 'runs/short' not in result.stdout
    for line in commands(result.stdout, 'solve'):
        assert '--iterations' not in line and '--init-from' not in line
    surgery, = commands(result.stdout, 'surgery')
    assert '--out weights/vgg16-fcn.caffemodel' in surgery


def test_the_toy_chain_runs_short_through_make(tmp_path):
    """The demo's chain, two iterations a stage, on a tiny toy set: classifier -> surgery
    -> FCN-32s -> 16s -> 8s, each scored on two val images."""
    data = tmp_path / 'data'
    subprocess.run([sys.executable, 'data/toy.py', '--out', str(data / 'toy'),
                    '--seg-train', '6', '--seg-val', '3', '--cls-train', '40', '--cls-val', '4'],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    runs = tmp_path / 'runs'
    result = make('toy-fcn8s', 'STEPS=2', 'VAL_IMAGES=2', f'RUNS={runs}',
                  f'BASE_WEIGHTS={runs}/weights', env={'FCN_DATA_DIR': str(data)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in ('toy-vgg16', 'toy-fcn32s', 'toy-fcn16s', 'toy-fcn8s'):
        validations = json.loads((runs / stage / 'val_log.json').read_text())
        assert [v['iteration'] for v in validations] == [2]
        assert (runs / stage / 'final.caffemodel').is_file()
    assert (runs / 'weights' / 'toy-vgg16-fcn.caffemodel').is_file()
    report = json.loads((runs / 'toy-fcn8s' / 'score.json').read_text())
    assert report['images'] == 2 and report['n_images'] == 2  # one head: metrics at the top
    assert 0 <= report['mean_iu'] <= 1
    check_prediction_sheet(tmp_path, data / 'toy', runs)


def check_prediction_sheet(tmp_path, toy, runs):
    """The demo's sheet of val predictions: each net's tile is the palette picture of the
    labels that infer.py, a command of its own, writes for the same image and weights."""
    import numpy as np
    from PIL import Image
    from fcn import pictures
    from fcn.reports import demo
    ids = (toy / 'ImageSets' / 'Segmentation' / 'val.txt').read_text().split()[:2]
    sheet_path = tmp_path / 'predictions.png'
    demo.prediction_sheet(runs, toy, sheet_path, count=2)
    sheet = np.asarray(Image.open(sheet_path).convert('RGB'))
    side, strip = 128 * demo.SHEET_ZOOM, 14  # the toy scenes are 128 x 128
    assert sheet.shape == (2 * (strip + side), 5 * side, 3)

    def tile(row, column):
        top = row * (strip + side) + strip
        return sheet[top:top + side, column * side:(column + 1) * side][::demo.SHEET_ZOOM,
                                                                          ::demo.SHEET_ZOOM]

    for row, image_id in enumerate(ids):
        truth = pictures.read_label_png(toy / 'SegmentationClass' / f'{image_id}.png')
        assert np.array_equal(tile(row, 1), pictures.PALETTE[truth])
    for column, (_, model) in enumerate(demo.STAGES, start=2):
        out = tmp_path / 'infer' / model
        done = subprocess.run(
            [sys.executable, 'solve/infer.py', model, '--cpu',
             '--weights', str(runs / model / 'final.caffemodel'), '--out', str(out),
             *[str(toy / 'JPEGImages' / f'{image_id}.jpg') for image_id in ids]],
            cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        for row, image_id in enumerate(ids):
            labels = pictures.read_label_png(out / f'{image_id}.png')
            assert np.array_equal(tile(row, column), pictures.PALETTE[labels]), (model, image_id)


@pytest.mark.parametrize('flag', ['--iterations', '--steps'])
def test_run_lengths_must_be_positive(flag):
    from fcn import nets
    from solve import solve as solve_command
    with pytest.raises(nets.UsageError, match=f'{flag} 0 is out of range'):
        solve_command.main(['voc-fcn32s', flag, '0'])
