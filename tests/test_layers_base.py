"""The shared data layer machinery (layers/base.py), exercised through the VOC layer:
parameters, order and seeding, sharding, prefetch, data root, every error."""
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import caffe
from checks.fixtures import make_voc
from layers import base
from layers.base import DataLayerError, resolve_dir
from layers.voc import VOCSegDataLayer
from test_data_fixtures import instantiate, net_with_layer, step

MEAN = [104.00699, 116.66877, 122.67892]
TRAIN = ['2008_000001', '2008_000002', '2008_000003', '2008_000004', '2008_000005']
VAL = ['2008_000004', '2008_000002', '2008_000005']


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    folder = tmp_path_factory.mktemp('voc') / 'VOC2011'
    return folder, make_voc(folder, {'train': TRAIN, 'val': VAL})


@pytest.fixture
def solvers():
    """Pretend to be solver `rank` of `count`; always restored to 0 of 1."""
    def pretend(rank, count):
        caffe.set_solver_count(count)
        caffe.set_solver_rank(rank)
    yield pretend
    caffe.set_solver_count(1)
    caffe.set_solver_rank(0)


def voc_params(folder, **extra):
    return {'voc_dir': str(folder), 'split': 'val', 'mean': MEAN, **extra}


def expected_data(rgb):
    bgr = rgb[:, :, ::-1].astype(np.float64) - np.array(MEAN)
    return bgr.astype(np.float32).transpose(2, 0, 1)[np.newaxis]


def identify(truth, label):
    """The id whose label map a label top holds."""
    found = [i for i, arrays in truth.items()
             if arrays['label'].shape == label.shape[2:] and (arrays['label'] == label[0, 0]).all()]
    assert len(found) == 1
    return found[0]


def run(layer, tops, truth, count):
    return [identify(truth, step(layer, tops)[1]) for _ in range(count)]


def test_evaluation_split_gives_exact_arrays_in_order_and_wraps(voc):
    folder, truth = voc
    layer, tops = instantiate(VOCSegDataLayer, voc_params(folder), 2)
    for example_id in VAL + VAL[:1]:
        data, label = step(layer, tops)
        assert data.dtype == np.float32 and data.shape == (1, 3) + truth[example_id]['rgb'].shape[:2]
        np.testing.assert_array_equal(data, expected_data(truth[example_id]['rgb']))
        np.testing.assert_array_equal(label, truth[example_id]['label'][np.newaxis, np.newaxis])
    assert (label == 255).any()  # void survives


def test_training_order_is_seeded_draws_with_replacement(voc):
    folder, truth = voc
    train = voc_params(folder, split='train')
    draws = random.Random(1337)
    expected = [TRAIN[draws.randrange(len(TRAIN))] for _ in range(12)]
    assert run(*instantiate(VOCSegDataLayer, train, 2), truth, 12) == expected
    assert run(*instantiate(VOCSegDataLayer, train, 2), truth, 12) == expected
    reseeded = run(*instantiate(VOCSegDataLayer, {**train, 'seed': 7}, 2), truth, 12)
    draws = random.Random(7)
    assert reseeded == [TRAIN[draws.randrange(len(TRAIN))] for _ in range(12)] != expected


def test_randomize_false_keeps_training_order_and_evaluation_is_never_random(voc):
    folder, truth = voc
    in_order = instantiate(VOCSegDataLayer, voc_params(folder, split='train', randomize=False), 2)
    assert run(*in_order, truth, 6) == TRAIN + TRAIN[:1]
    # As in the reference: only splits named *train* are shuffled.
    asked_random = instantiate(VOCSegDataLayer, voc_params(folder, randomize=True), 2)
    assert run(*asked_random, truth, 3) == VAL


def test_training_splits_are_sharded_by_solver_rank(voc, solvers):
    folder, truth = voc
    solvers(1, 2)
    train = voc_params(folder, split='train', randomize=False)
    assert run(*instantiate(VOCSegDataLayer, train, 2), truth, 3) == TRAIN[1::2] + TRAIN[1:2]
    solvers(2, 3)
    assert instantiate(VOCSegDataLayer, train, 2)[0].ids == TRAIN[2::3]
    # Every solver scores the whole evaluation split.
    assert instantiate(VOCSegDataLayer, voc_params(folder), 2)[0].ids == VAL
    solvers(7, 8)
    with pytest.raises(DataLayerError, match='lists 5 ids: too few for 8 solvers'):
        instantiate(VOCSegDataLayer, train, 2)


def test_sharding_inside_a_real_net(voc, solvers, tmp_path):
    folder, truth = voc
    solvers(0, 2)
    net = net_with_layer(tmp_path, 'layers.voc', 'VOCSegDataLayer',
                         voc_params(folder, split='train', randomize=False), ['data', 'label'])
    assert net.layers[0].ids == TRAIN[0::2]
    seen = []
    for _ in range(3):
        net.forward()
        seen.append(identify(truth, net.blobs['label'].data))
    assert seen == TRAIN[0::2]


def test_prefetch_gives_the_same_examples_and_loads_ahead(voc):
    folder, truth = voc
    train = voc_params(folder, split='train')
    plain_layer, plain_tops = instantiate(VOCSegDataLayer, train, 2)
    ahead_layer, ahead_tops = instantiate(VOCSegDataLayer, {**train, 'prefetch': True}, 2)
    for _ in range(10):
        for plain, ahead in zip(step(plain_layer, plain_tops), step(ahead_layer, ahead_tops)):
            np.testing.assert_array_equal(plain, ahead)
        if ahead_layer.position != ahead_layer.loaded[0]:
            assert ahead_layer.pending[0] == ahead_layer.position


def test_prefetch_errors_surface_on_the_next_iteration(tmp_path):
    folder = tmp_path / 'VOC'
    make_voc(folder, {'val': ['a', 'b']})
    (folder / 'JPEGImages' / 'b.jpg').write_bytes(b'not a jpeg')
    layer, tops = instantiate(VOCSegDataLayer, voc_params(folder, prefetch=True), 2)
    step(layer, tops)
    with pytest.raises(DataLayerError, match='cannot read image .*b.jpg'):
        step(layer, tops)


@pytest.mark.parametrize('params, message', [
    ('{"voc_dir": ', 'param_str is not valid JSON'),
    ('["voc_dir"]', 'param_str must be a JSON object'),
    ({'split': 'val', 'mean': MEAN}, "missing key 'voc_dir'"),
    ({'voc_dir': 'x', 'split': 'val'}, "missing key 'mean'"),
    ({'voc_dir': 'x', 'split': 'val', 'mean': MEAN, 'shuffle': True}, "unknown key 'shuffle'"),
    ({'voc_dir': 7, 'split': 'val', 'mean': MEAN}, "key 'voc_dir' must be a non-empty string"),
    ({'voc_dir': 'x', 'split': '../val', 'mean': MEAN}, "key 'split' must be a plain name"),
    ({'voc_dir': 'x', 'split': 'val', 'mean': [1, 2]}, "key 'mean' must be a list of three"),
    ({'voc_dir': 'x', 'split': 'val', 'mean': [1, 2, 'x']}, "key 'mean' must be a list of three"),
    ({'voc_dir': 'x', 'split': 'val', 'mean': MEAN, 'seed': 1.5}, "key 'seed' must be an integer"),
    ({'voc_dir': 'x', 'split': 'val', 'mean': MEAN, 'seed': True}, "key 'seed' must be an integer"),
    ({'voc_dir': 'x', 'split': 'val', 'mean': MEAN, 'randomize': 1}, "key 'randomize' must be true"),
    ({'voc_dir': 'x', 'split': 'val', 'mean': MEAN, 'prefetch': 'yes'}, "key 'prefetch' must be"),
])
def test_bad_parameters_name_the_key(params, message):
    with pytest.raises(DataLayerError, match='VOCSegDataLayer: ' + message):
        instantiate(VOCSegDataLayer, params, 2)


def test_wrong_tops_or_bottoms(voc):
    folder, _ = voc
    with pytest.raises(DataLayerError, match=r'needs 2 tops \(data, label\), got 3'):
        instantiate(VOCSegDataLayer, voc_params(folder), 3)
    configured = type('VOCSegDataLayer', (VOCSegDataLayer,),
                      {'param_str': json.dumps(voc_params(folder))})
    layer = configured.__new__(configured)
    with pytest.raises(DataLayerError, match='takes no bottoms, got 1'):
        layer.setup([object()], [object(), object()])


def test_missing_dataset_folder_and_split_file_name_the_path_and_make_target(tmp_path):
    with pytest.raises(DataLayerError, match=r'dataset folder .*nowhere does not exist: '
                                             r'run `make data-voc`'):
        instantiate(VOCSegDataLayer, voc_params(tmp_path / 'nowhere'), 2)
    (tmp_path / 'ImageSets' / 'Segmentation').mkdir(parents=True)
    with pytest.raises(DataLayerError, match=r'split file .*val.txt does not exist: '
                                             r'run `make data-voc`'):
        instantiate(VOCSegDataLayer, voc_params(tmp_path), 2)
    (tmp_path / 'ImageSets' / 'Segmentation' / 'val.txt').write_text('\n')
    with pytest.raises(DataLayerError, match='lists no ids'):
        instantiate(VOCSegDataLayer, voc_params(tmp_path), 2)


def test_bad_files_name_the_file_or_the_id(tmp_path):
    folder = tmp_path / 'VOC'
    truth = make_voc(folder, {'val': ['unreadable', 'grey', 'rgb_label', 'mismatch', 'outside']})
    (folder / 'JPEGImages' / 'unreadable.jpg').write_bytes(b'\xff\xd8 broken')
    Image.fromarray(truth['grey']['rgb'][:, :, 0]).save(folder / 'JPEGImages' / 'grey.jpg')
    Image.fromarray(truth['rgb_label']['rgb']).save(folder / 'SegmentationClass' / 'rgb_label.png')
    small = truth['mismatch']['label'][:-1]
    Image.fromarray(small, 'L').save(folder / 'SegmentationClass' / 'mismatch.png')
    outside = truth['outside']['label'].copy()
    outside[-1, -1] = 21
    Image.fromarray(outside, 'L').save(folder / 'SegmentationClass' / 'outside.png')
    layer, tops = instantiate(VOCSegDataLayer, voc_params(folder), 2)
    expected = [r'cannot read image .*unreadable\.jpg',
                r'image .*grey\.jpg is not RGB',
                r'label image .*rgb_label\.png is not an indexed',
                r"VOCSegDataLayer id 'mismatch': image and label sizes differ \(data 3x5, label 2x5\)",
                r"VOCSegDataLayer id 'outside': label value 21 is outside the classes 0-20"]
    for message in expected:
        with pytest.raises(DataLayerError, match=message):
            layer.reshape([], tops)
        layer.advance()  # what forward would do after a good example


def test_missing_label_file_names_it(tmp_path):
    folder = tmp_path / 'VOC'
    make_voc(folder, {'val': ['a']})
    (folder / 'SegmentationClass' / 'a.png').unlink()
    with pytest.raises(DataLayerError, match=r'cannot read image .*SegmentationClass/a\.png'):
        instantiate(VOCSegDataLayer, voc_params(folder), 2)[0].reshape([], [])


def test_relative_dirs_resolve_against_the_data_root(voc, monkeypatch):
    folder, truth = voc
    monkeypatch.delenv('FCN_DATA_DIR', raising=False)
    assert resolve_dir('pascal/VOC2011') == base.data_root() / 'pascal/VOC2011'
    assert base.data_root() == Path(base.__file__).resolve().parent.parent / 'data'
    assert resolve_dir('/abs/olute') == Path('/abs/olute')
    monkeypatch.setenv('FCN_DATA_DIR', str(folder.parent))
    layer, tops = instantiate(VOCSegDataLayer, voc_params(folder.name), 2)
    assert identify(truth, step(layer, tops)[1]) == VAL[0]


def test_a_real_net_reshapes_to_each_image(voc, tmp_path):
    folder, truth = voc
    net = net_with_layer(tmp_path, 'layers.voc', 'VOCSegDataLayer', voc_params(folder),
                         ['data', 'label'])
    for example_id in VAL:
        net.forward()
        rgb = truth[example_id]['rgb']
        assert net.blobs['data'].data.shape == (1, 3) + rgb.shape[:2]
        np.testing.assert_array_equal(net.blobs['data'].data, expected_data(rgb))
        np.testing.assert_array_equal(net.blobs['label'].data[0, 0], truth[example_id]['label'])


def test_errors_reach_the_caller_of_caffe_net(tmp_path):
    with pytest.raises(DataLayerError, match="missing key 'mean'"):
        net_with_layer(tmp_path, 'layers.voc', 'VOCSegDataLayer',
                       {'voc_dir': 'x', 'split': 'val'}, ['data', 'label'])
