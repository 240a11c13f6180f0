"""fcn/reports/page.py: the results page's data and pictures from made-up scored runs
(checks/page_runs.py): per-image scores against a numpy computation from the label and
prediction files, error maps pixel by pixel, thumbnails rendered once, and runs lacking a
score, per-image counts or an image named while the rest renders."""
import json

import numpy as np
import pytest
from PIL import Image

from checks import page_runs
from fcn import pictures, runs
from fcn.reports import page
from solve import page as page_command

MODELS = ['toy-fcn32s', 'toy-fcn16s', 'toy-fcn8s']
VOID = 255


@pytest.fixture
def fixture_runs(tmp_path, monkeypatch):
    data, runs_dir = page_runs.write_fixture(tmp_path, MODELS, 12, (64, 48))
    monkeypatch.setenv('FCN_DATA_DIR', str(data))
    return data, runs_dir


def voc(data):
    return page_runs.voc_dir('toy-fcn8s', data)


def numpy_scores(gt, pred, num_classes):
    """An image's pixel accuracy and mean IU over the classes in its ground truth or its
    prediction, by masks."""
    valid = gt != VOID
    ius = []
    for c in range(num_classes):
        union = np.sum(valid & ((gt == c) | (pred == c)))
        if union:
            ius.append(np.sum(valid & (gt == c) & (pred == c)) / union)
    return np.mean(gt[valid] == pred[valid]), np.mean(ius)


def test_every_run_with_its_metrics_images_and_error_maps(fixture_runs):
    data, runs_dir = fixture_runs
    index, document, counts = page.build(runs_dir)
    assert index == runs_dir / 'page' / 'index.html'
    assert json.loads((index.parent / 'index.json').read_text()) == document
    assert (index.parent / 'data.js').read_text().startswith('window.PAGE = {')
    for name in page.SITE_FILES:
        assert (index.parent / name).read_bytes() == (page.SITE / name).read_bytes()
    assert [run['model'] for run in document['runs']] == MODELS  # the table's order
    for run in document['runs']:
        assert run['missing'] == []
        head, = run['heads']
        score = json.loads((runs_dir / run['model'] / 'score.json').read_text())
        assert head['metrics']['mean_iu'] == pytest.approx(score['mean_iu'], abs=1e-6)
        assert (index.parent / head['confusion']).is_file()
        images = head['images']
        assert len(images['ids']) == 12 and images['no_prediction'] == []
        for i, image_id in enumerate(images['ids']):
            gt = pictures.read_label_png(voc(data) / 'SegmentationClass' / f'{image_id}.png')
            pred = pictures.read_label_png(runs_dir / run['model'] / 'predictions'
                                           / f'{image_id}.png')
            pixel_acc, mean_iu = numpy_scores(gt, pred, 6)
            assert images['pixel_acc'][i] == pytest.approx(pixel_acc, abs=1e-6)
            assert images['mean_iu'][i] == pytest.approx(mean_iu, abs=1e-6)
            assert images['classes'][i] == sorted(set(np.unique(gt).tolist()) - {VOID})
            # thumbnails at the image's own size (it is below THUMB): the error map exact
            err = np.array(Image.open(index.parent / 'runs' / run['key'] / 'err'
                                      / f'{image_id}.png').convert('RGB'))
            want = np.where(gt == VOID, page.VOID, np.where(gt != pred, page.WRONG, page.RIGHT))
            np.testing.assert_array_equal(err, page.ERROR_COLOURS[want])
            assert (index.parent / 'sets' / head['set'] / f'{image_id}.jpg').is_file()
    legend, = document['legends']
    assert legend['dataset'] == 'toy' and legend['classes'][1][2] == '#800000'
    assert [row['model'] for row in document['reproduction']] == MODELS


def test_an_error_thumbnail_keeps_a_wrong_line_thinner_than_its_pixels():
    codes = np.zeros((10 * page.THUMB, 5 * page.THUMB), np.uint8)  # a factor of 10
    codes[:, 37] = page.WRONG                   # one pixel wide, in block column 3
    codes[500:, :] = np.maximum(codes[500:, :], page.VOID)
    small = page.shrink_codes(codes)
    assert small.shape == (page.THUMB, page.THUMB // 2)
    assert (small[:, 3] == page.WRONG).all()
    assert (small[:50, :3] == page.RIGHT).all() and (small[50:, 4:] == page.VOID).all()


def test_thumbnails_are_rendered_once_and_again_when_a_prediction_changes(fixture_runs):
    _, runs_dir = fixture_runs
    _, _, first = page.build(runs_dir)
    assert first['rendered'] > 0
    _, _, again = page.build(runs_dir)
    assert again['rendered'] == 0
    prediction = runs_dir / 'toy-fcn8s' / 'predictions'
    changed = sorted(prediction.glob('*.png'))[3]
    pictures.save_label_png(changed, np.zeros((48, 64), np.uint8))
    _, _, third = page.build(runs_dir)
    assert third['rendered'] == 2  # its prediction and its error map


def test_bad_input_is_named_and_the_rest_renders(fixture_runs, capsys):
    data, runs_dir = fixture_runs
    # a run with a training log and no score, and a classifier's (not scored by design)
    for model in ('toy-fcn32s-unscored', 'toy-vgg16'):
        (runs_dir / model).mkdir()
        (runs_dir / model / runs.TRAIN_LOG).write_text('iteration,loss\n1,2.0\n')
    # a score from before per-image counts and predictions were kept
    old = runs_dir / 'toy-fcn16s'
    (old / 'score-images.npz').unlink()
    for png in (old / 'predictions').glob('*.png'):
        png.unlink()
    (old / 'predictions').rmdir()
    # an image of the split gone
    missing_id = sorted((voc(data) / 'JPEGImages').glob('*.jpg'))[5]
    missing_id.unlink()
    page_command.main(['--runs-dir', str(runs_dir)])
    out = capsys.readouterr().out
    assert 'toy-fcn32s-unscored: missing' in out and 'no score' in out
    assert 'toy-vgg16: missing' not in out
    assert 'toy-fcn16s: missing' in out and 'no per-image scores' in out
    assert f'page: {runs_dir / "page" / "index.html"}' in out
    document = json.loads((runs_dir / 'page' / 'index.json').read_text())
    by_model = {run['model']: run for run in document['runs']}
    assert by_model['toy-fcn32s-unscored']['heads'] == []
    assert by_model['toy-vgg16']['missing'] == [] and 'a classifier' in \
        by_model['toy-vgg16']['notes'][0]
    assert any('score-images.npz' in m for m in by_model['toy-fcn16s']['missing'])
    assert 'images' not in by_model['toy-fcn16s']['heads'][0]
    assert by_model['toy-fcn16s']['heads'][0]['metrics']['mean_iu'] is not None
    for model in ('toy-fcn32s', 'toy-fcn8s'):
        run = by_model[model]
        assert len(run['missing']) == 1 and missing_id.stem in run['missing'][0]
        assert len(run['heads'][0]['images']['ids']) == 12
    split, = document['sets'].values()
    assert list(split['missing']) == [missing_id.stem]
    assert str(missing_id) in split['missing'][missing_id.stem]


def test_both_sift_flow_heads_in_the_legend_and_a_dataset_not_prepared(fixture_runs):
    data, runs_dir = fixture_runs
    from fcn import evaluation, nets
    spec = nets.model_spec('siftflow-fcn8s')
    hists, names = {}, {}
    for head in spec.heads:
        hists[head.label] = evaluation.ConfusionMatrix(head.num_classes)
        hists[head.label].add(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [2, 0]]), 'a')
        names[head.label] = nets.class_names(spec, head)
    evaluation.write_outputs(runs_dir / 'siftflow-fcn8s' / 'score.json', hists, names,
                             dict.fromkeys(hists, False), {'model': 'siftflow-fcn8s',
                                                           'split': 'test'})
    # per-image counts from another scoring than the report beside them
    stale = evaluation.ConfusionMatrix(6)
    stale.add(np.zeros((2, 2)), np.zeros((2, 2)), 'x')
    evaluation.save_image_counts(runs_dir / 'toy-fcn16s' / 'score-images.npz',
                                 {'label': stale}, {'label': tuple('abcdef')})
    _, document, _ = page.build(runs_dir)
    legends = {(legend['dataset'], legend['label']): legend for legend in document['legends']}
    assert set(legends) == {('toy', 'label'), ('siftflow', 'sem'), ('siftflow', 'geo')}
    assert [name for _, name, _ in legends['siftflow', 'geo']['classes']] == \
        ['sky', 'horizontal', 'vertical']
    assert len(legends['siftflow', 'sem']['classes']) == 33
    by_model = {run['model']: run for run in document['runs']}
    siftflow = by_model['siftflow-fcn8s']
    assert [head['label'] for head in siftflow['heads']] == ['sem', 'geo']
    assert all((runs_dir / 'page' / head['confusion']).is_file() for head in siftflow['heads'])
    assert 'the images of siftflow-fcn8s test cannot be read' in siftflow['missing'][0]
    assert 'make data-siftflow' in siftflow['missing'][0]
    stale_run = by_model['toy-fcn16s']
    assert 'counts 1 images of label, score.json 12' in stale_run['missing'][0]
    assert 'images' not in stale_run['heads'][0]
    assert 'images' in by_model['toy-fcn8s']['heads'][0]
