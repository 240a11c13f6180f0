"""evaluation.py: the metrics against a straightforward per-class implementation, the missing
class rules, sharded scoring that merges to the unsharded result, and scoring a net."""
import json

import numpy as np
import pytest

from fcn import evaluation
from solve import score as score_command
from checks import stress
from fcn import pictures
from fcn.nets import UsageError

VOID = 255


def reference_metrics(gts, preds, num_classes, ignore_absent=False):
    """The FCN metrics computed class by class with masks, no confusion matrix."""
    gt = np.concatenate([g.ravel() for g in gts])
    pred = np.concatenate([p.ravel() for p in preds])
    valid = gt != VOID
    gt, pred = gt[valid], pred[valid]
    accs, ius, weighted = [], [], 0.0
    per_class = []
    for c in range(num_classes):
        in_gt, in_pred = gt == c, pred == c
        tp = np.sum(in_gt & in_pred)
        union = np.sum(in_gt | in_pred)
        if in_gt.any():
            accs.append(tp / in_gt.sum())
        has_iu = union > 0 and (in_gt.any() or not ignore_absent)
        per_class.append(tp / union if has_iu else None)
        if has_iu:
            ius.append(tp / union)
        if in_gt.any():
            weighted += in_gt.mean() * tp / union
    return {'pixel_acc': np.mean(gt == pred), 'mean_acc': np.mean(accs),
            'mean_iu': np.mean(ius), 'fwavacc': weighted, 'per_class_iu': per_class}


def random_maps(rng, count, num_classes, absent=(), predicted_only=()):
    """Label maps with void pixels, classes `absent` from both ground truth and
    predictions, and classes `predicted_only` never in the ground truth."""
    gts, preds = [], []
    present = [c for c in range(num_classes) if c not in absent]
    gt_classes = [c for c in present if c not in predicted_only]
    for _ in range(count):
        shape = tuple(rng.integers(5, 20, 2))
        gt = rng.choice(gt_classes, shape).astype(np.uint8)
        gt[rng.random(shape) < 0.1] = VOID
        pred = np.where(rng.random(shape) < 0.6, gt, rng.choice(present, shape))
        pred[pred == VOID] = present[0]
        gts.append(gt)
        preds.append(pred.astype(np.uint8))
    return gts, preds


@pytest.mark.parametrize('ignore_absent', [False, True])
def test_metrics_match_the_per_class_computation(ignore_absent):
    rng = np.random.default_rng(0)
    gts, preds = random_maps(rng, 7, num_classes=6, absent=(4,), predicted_only=(2,))
    hist = evaluation.ConfusionMatrix(6)
    for gt, pred in zip(gts, preds):
        hist.add(gt, pred)
    got = hist.metrics(ignore_absent=ignore_absent)
    want = reference_metrics(gts, preds, 6, ignore_absent)
    for key in ('pixel_acc', 'mean_acc', 'mean_iu', 'fwavacc'):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert list(got['per_class_iu'].values()) == pytest.approx(want['per_class_iu'])
    assert got['n_images'] == 7
    assert set(got) == set(evaluation.METRIC_KEYS)


def test_missing_classes_the_reference_way_and_with_ignore_absent():
    # class 1 has predictions but no ground truth; class 2 appears nowhere
    gt = np.array([[0, 0, 3, 3]])
    pred = np.array([[0, 1, 3, 3]])
    hist = evaluation.ConfusionMatrix(4)
    hist.add(gt, pred)
    default = hist.metrics()
    assert default['per_class_iu'] == {'class 0': 0.5, 'class 1': 0.0, 'class 2': None,
                                       'class 3': 1.0}
    assert default['mean_iu'] == pytest.approx((0.5 + 0 + 1) / 3)
    absent_left_out = hist.metrics(ignore_absent=True)
    assert absent_left_out['per_class_iu']['class 1'] is None
    assert absent_left_out['mean_iu'] == pytest.approx(0.75)


def test_void_and_out_of_range_ground_truth_are_not_counted():
    hist = evaluation.ConfusionMatrix(3)
    hist.add(np.array([VOID, 1, 7]), np.array([2, 1, 0]))
    assert hist.hist.sum() == 1 and hist.hist[1, 1] == 1
    with pytest.raises(ValueError, match='class ids 0..2'):
        hist.add(np.array([0]), np.array([3]))


def write_pngs(folder, maps):
    for index, label in enumerate(maps):
        pictures.save_label_png(folder / f'{index:03d}.png', label)


def test_shards_merge_into_the_unsharded_result(tmp_path, capsys):
    rng = np.random.default_rng(1)
    gts, preds = random_maps(rng, 9, num_classes=5, predicted_only=(3,))
    write_pngs(tmp_path / 'gt', gts)
    write_pngs(tmp_path / 'pred', preds)
    common = ['--pred-dir', str(tmp_path / 'pred'), '--gt-dir', str(tmp_path / 'gt'),
              '--num-classes', '5', '--ignore-absent']
    score_command.main(common + ['--json', str(tmp_path / 'whole.json')])
    shards = []
    for index in range(3):
        shards.append(tmp_path / f'shard{index}.npz')
        score_command.main(common + ['--shard', f'{index}/3', '--save-hist', str(shards[-1])])
    score_command.main(['--merge'] + [str(p) for p in shards]
                       + ['--json', str(tmp_path / 'm.json')])
    whole = json.loads((tmp_path / 'whole.json').read_text())
    merged = json.loads((tmp_path / 'm.json').read_text())
    for key in evaluation.METRIC_KEYS:
        assert merged[key] == whole[key], key
    assert merged['confusion'] == whole['confusion']
    assert whole['n_images'] == 9
    assert whole['per_class_iu']['class 3'] is None  # --ignore-absent survives the merge
    want = reference_metrics(gts, preds, 5, ignore_absent=True)
    assert whole['mean_iu'] == pytest.approx(want['mean_iu'])
    assert (tmp_path / 'whole-confusion.png').stat().st_size > 0
    # the per-image counts: merged in the split's order whatever the order of the shards
    score_command.main(['--merge'] + [str(p) for p in reversed(shards)]
                       + ['--json', str(tmp_path / 'r.json')])
    (_, whole_images), = evaluation.load_image_counts(tmp_path / 'whole-images.npz').values()
    assert whole_images.ids == [f'{i:03d}' for i in range(9)]
    for name in ('m-images.npz', 'r-images.npz'):
        (_, merged_images), = evaluation.load_image_counts(tmp_path / name).values()
        assert merged_images.ids == whole_images.ids
        np.testing.assert_array_equal(merged_images.counts, whole_images.counts)
    np.testing.assert_array_equal(whole_images.counts, numpy_image_counts(gts, preds, 5))
    with pytest.raises(UsageError, match='do not make one whole split'):
        score_command.main(['--merge', str(shards[0]), str(shards[2])])


def numpy_image_counts(gts, preds, num_classes):
    """Per image and class: intersection, ground truth and prediction pixels over the
    non-void pixels, by masks."""
    table = np.zeros((len(gts), 3, num_classes), np.int64)
    for index, (gt, pred) in enumerate(zip(gts, preds)):
        valid = gt != VOID
        for c in range(num_classes):
            table[index, :, c] = (np.sum(valid & (gt == c) & (pred == c)),
                                  np.sum(valid & (gt == c)), np.sum(valid & (pred == c)))
    return table


def test_per_image_counts_and_metrics_match_numpy():
    rng = np.random.default_rng(4)
    gts, preds = random_maps(rng, 8, num_classes=6, absent=(4,), predicted_only=(2,))
    gts.append(np.full((3, 3), VOID, np.uint8))  # an image with nothing counted
    preds.append(np.zeros((3, 3), np.uint8))
    hist = evaluation.ConfusionMatrix(6)
    for index, (gt, pred) in enumerate(zip(gts, preds)):
        hist.add(gt, pred, f'im{index}')
    assert hist.images.ids == [f'im{i}' for i in range(9)]
    np.testing.assert_array_equal(hist.images.table(), numpy_image_counts(gts, preds, 6))
    pixel_acc, mean_iu = hist.images.metrics()
    for index, (gt, pred) in enumerate(zip(gts[:-1], preds[:-1])):
        want = reference_metrics([gt], [pred], 6)
        assert pixel_acc[index] == pytest.approx(want['pixel_acc'], abs=1e-12)
        assert mean_iu[index] == pytest.approx(want['mean_iu'], abs=1e-12)
    assert np.isnan(pixel_acc[-1]) and np.isnan(mean_iu[-1])
    # per-image counts add up to the split's matrix
    np.testing.assert_array_equal(hist.images.table()[:, 0].sum(0), np.diag(hist.hist))
    np.testing.assert_array_equal(hist.images.table()[:, 1].sum(0), hist.hist.sum(1))


def test_shards_without_per_image_counts_merge_without_them(tmp_path):
    """Histograms saved before per-image counts existed still merge; the report then has
    no per-image file, and a stale one beside it is removed."""
    rng = np.random.default_rng(5)
    gts, preds = random_maps(rng, 4, num_classes=3)
    names, ignore = {'label': ('a', 'b', 'c')}, {'label': False}
    paths = []
    for index in range(2):
        hist = evaluation.ConfusionMatrix(3)
        for gt, pred in zip(gts[2 * index:2 * index + 2], preds[2 * index:2 * index + 2]):
            hist.add(gt, pred)
        paths.append(tmp_path / f'{index}.npz')
        np.savez(paths[-1], hist_label=hist.hist, meta=json.dumps(
            {'shard': [index, 2], 'heads': [{'label': 'label', 'class_names': list('abc'),
                                            'ignore_absent': False, 'n_images': 2}]}))
    (tmp_path / 'score-images.npz').write_bytes(b'stale')
    hists, names, ignore = evaluation.merge_hists(paths)
    assert hists['label'].images is None and hists['label'].n_images == 4
    evaluation.write_outputs(tmp_path / 'score.json', hists, names, ignore)
    assert not (tmp_path / 'score-images.npz').exists()
    assert json.loads((tmp_path / 'score.json').read_text())['n_images'] == 4


def test_prediction_missing_for_a_label_is_an_error(tmp_path):
    write_pngs(tmp_path / 'gt', [np.zeros((4, 4), np.uint8)] * 2)
    write_pngs(tmp_path / 'pred', [np.zeros((4, 4), np.uint8)])
    with pytest.raises(UsageError, match='no prediction .*001.png'):
        score_command.main(['--pred-dir', str(tmp_path / 'pred'), '--gt-dir', str(tmp_path / 'gt'),
                    '--num-classes', '2'])


@pytest.fixture(scope='module')
def val_net(tmp_path_factory):
    import caffe
    caffe.set_mode_cpu()
    folder = tmp_path_factory.mktemp('tiny')
    stress.write_model(folder, val_images=5)
    net = caffe.Net(str(folder / 'val.prototxt'), caffe.TEST)
    return net


def test_score_net_counts_every_image_and_shards_add_up(val_net, tmp_path):
    heads = stress.heads()
    ids = [str(i) for i in range(6)]
    whole = evaluation.score_net(val_net, heads, ids, save_dir=tmp_path)['label']
    again = evaluation.score_net(val_net, heads, ids)['label']
    np.testing.assert_array_equal(whole.hist, again.hist)  # the reader ends where it began
    parts = [evaluation.score_net(val_net, heads, ids, shard=(i, 4))['label'] for i in range(4)]
    total = evaluation.ConfusionMatrix(stress.NUM_CLASSES)
    for part in parts:
        total += part
    np.testing.assert_array_equal(total.hist, whole.hist)
    assert total.n_images == whole.n_images == 6
    assert total.images.ids == ids
    np.testing.assert_array_equal(total.images.table(), whole.images.table())
    # every non-void pixel of every image is counted exactly once
    pixels = sum((stress.synthetic_example(i, 16)[1] != VOID).sum() for i in range(6))
    assert whole.hist.sum() == pixels
    assert whole.images.ids == ids
    np.testing.assert_array_equal(whole.images.table().sum(0)[0], np.diag(whole.hist))
    label = pictures.read_label_png(tmp_path / '5.png')
    assert label.shape == stress.synthetic_example(5, 16)[1].shape[1:]
    assert label.max() < stress.NUM_CLASSES


def test_the_first_images_are_divided_among_the_shards(val_net):
    """evaluation.py --images N --shard i/n: the shards of the split's first N images add up
    to scoring those N images whole (make SHARDS=n VAL_IMAGES=N)."""
    heads = stress.heads()
    ids = [str(i) for i in range(6)]
    first = evaluation.score_net(val_net, heads, ids, limit=4)['label']
    total = evaluation.ConfusionMatrix(stress.NUM_CLASSES)
    for index in range(3):
        total += evaluation.score_net(val_net, heads, ids, shard=(index, 3), limit=4)['label']
    np.testing.assert_array_equal(total.hist, first.hist)
    assert total.n_images == first.n_images == 4
    pixels = sum((stress.synthetic_example(i, 16)[1] != VOID).sum() for i in range(4))
    assert first.hist.sum() == pixels
