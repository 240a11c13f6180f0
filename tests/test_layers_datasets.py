"""Each dataset's layer: exact arrays (BGR, means, C x H x W, label shifts, void 255),
its own errors, CLASS_NAMES, and one forward pass inside a real caffe.Net."""
import numpy as np
import pytest
import scipy.io
from PIL import Image

from checks.fixtures import SIFTFLOW_SCENES, make_context, make_nyud, make_sbdd, make_siftflow
from layers import nyud, pascalcontext, siftflow, voc
from layers.base import DataLayerError
from layers.nyud import NYUDSegDataLayer
from layers.pascalcontext import PASCALContextSegDataLayer
from layers.siftflow import SIFTFlowSegDataLayer
from layers.voc import SBDDSegDataLayer
from test_data_fixtures import context_expected, instantiate, net_with_layer, step

PASCAL_MEAN = [104.00699, 116.66877, 122.67892]


def bgr_minus(rgb, mean):
    """The reference preprocessing written out: RGB -> BGR, minus mean, HWC -> CHW,
    in the mean's precision (float64 for parameters, float32 for built-in means)."""
    bgr = rgb[:, :, ::-1].astype(np.result_type(np.float32, np.asarray(mean).dtype)) - mean
    return bgr.astype(np.float32).transpose(2, 0, 1)[np.newaxis]


def test_class_names_have_the_published_sizes():
    assert {top: len(names) for top, names in voc.CLASS_NAMES.items()} == {'label': 21}
    assert {top: len(names) for top, names in nyud.CLASS_NAMES.items()} == {'label': 40}
    assert ({top: len(names) for top, names in siftflow.CLASS_NAMES.items()}
            == {'sem': 33, 'geo': 3})
    assert {top: len(names) for top, names in pascalcontext.CLASS_NAMES.items()} == {'label': 60}
    assert voc.CLASS_NAMES['label'][0] == pascalcontext.CLASS_NAMES['label'][0] == 'background'
    assert voc.CLASS_NAMES['label'][20] == 'tvmonitor'
    assert nyud.CLASS_NAMES['label'][39] == 'otherprop'
    assert siftflow.CLASS_NAMES['geo'] == ('sky', 'horizontal', 'vertical')
    assert all(name in siftflow.CLASS_NAMES['sem'] for name in siftflow.ABSENT_FROM_TEST)
    for module in (voc, nyud, siftflow, pascalcontext):
        for names in module.CLASS_NAMES.values():
            assert isinstance(names, tuple) and len(set(names)) == len(names)


# ---- SBD ----------------------------------------------------------------------------

def test_sbdd_reads_gtcls_structs(tmp_path):
    truth = make_sbdd(tmp_path / 'dataset', {'train': ['2008_000002', '2008_000003'],
                                             'val': ['2008_000003']})
    layer, tops = instantiate(SBDDSegDataLayer, {'sbdd_dir': str(tmp_path / 'dataset'),
                                                 'split': 'val', 'mean': PASCAL_MEAN}, 2)
    data, label = step(layer, tops)
    arrays = truth['2008_000003']
    np.testing.assert_array_equal(data, bgr_minus(arrays['rgb'], np.array(PASCAL_MEAN)))
    np.testing.assert_array_equal(label, arrays['label'][np.newaxis, np.newaxis])


def test_sbdd_rejects_a_mat_without_the_struct(tmp_path):
    make_sbdd(tmp_path, {'val': ['a']})
    scipy.io.savemat(tmp_path / 'cls' / 'a.mat', {'GTinst': np.zeros((2, 2))})
    layer, tops = instantiate(SBDDSegDataLayer, {'sbdd_dir': str(tmp_path), 'split': 'val',
                                                 'mean': PASCAL_MEAN}, 2)
    with pytest.raises(DataLayerError, match=r"cls/a\.mat has no variable 'GTcls' \(has: GTinst\)"):
        step(layer, tops)
    scipy.io.savemat(tmp_path / 'cls' / 'a.mat', {'GTcls': np.zeros((2, 2))})
    layer, tops = instantiate(SBDDSegDataLayer, {'sbdd_dir': str(tmp_path), 'split': 'val',
                                                 'mean': PASCAL_MEAN}, 2)
    with pytest.raises(DataLayerError, match='is not a struct with a Segmentation field'):
        step(layer, tops)


# ---- NYUDv2 -----------------------------------------------------------------------

@pytest.fixture(scope='module')
def nyud_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp('nyud')
    return folder, make_nyud(folder, {'trainval': ['5001', '5002'], 'test': ['5003', '5004']})


def test_nyud_tops_in_the_order_asked(nyud_data):
    folder, truth = nyud_data
    tops_asked = ['label', 'hha', 'depth', 'color']
    layer, tops = instantiate(NYUDSegDataLayer, {'nyud_dir': str(folder), 'split': 'test',
                                                 'tops': tops_asked}, 4)
    for example_id in ('5003', '5004'):
        label, hha, depth, color = step(layer, tops)
        arrays = truth[example_id]
        np.testing.assert_array_equal(color, bgr_minus(arrays['color'], nyud.MEAN_BGR))
        expected_hha = (arrays['hha'].astype(np.float32) - nyud.MEAN_HHA).transpose(2, 0, 1)
        np.testing.assert_array_equal(hha, expected_hha[np.newaxis])
        log_depth = np.log(arrays['depth'].astype(np.float32)) - np.float32(7.844)
        np.testing.assert_array_equal(depth, log_depth[np.newaxis, np.newaxis])
        shifted = np.where(arrays['raw'] == 0, 255, arrays['raw'].astype(int) - 1)
        np.testing.assert_array_equal(label, shifted[np.newaxis, np.newaxis])
        assert label[0, 0, 0, 0] == 255 and label.max() <= 255


def test_nyud_errors(nyud_data, tmp_path):
    folder, _ = nyud_data
    with pytest.raises(DataLayerError, match="key 'tops' must be a non-empty list of distinct"):
        instantiate(NYUDSegDataLayer, {'nyud_dir': str(folder), 'split': 'test',
                                       'tops': ['color', 'color']}, 2)
    with pytest.raises(DataLayerError, match="key 'tops' must be .* color, depth, hha, label"):
        instantiate(NYUDSegDataLayer, {'nyud_dir': str(folder), 'split': 'test',
                                       'tops': ['rgb']}, 1)
    with pytest.raises(DataLayerError, match=r'run `make data-nyud`'):
        instantiate(NYUDSegDataLayer, {'nyud_dir': str(tmp_path / 'x'), 'split': 'test',
                                       'tops': ['color']}, 1)
    bad = tmp_path / 'bad'
    make_nyud(bad, {'test': ['1', '2']})
    Image.fromarray(np.zeros((3, 4), np.uint16)).save(bad / 'data/depth/img_1.png')
    scipy.io.savemat(bad / 'segmentation/img_2.mat', {'segmentation': np.full((4, 6), 41, np.uint8)})
    layer, tops = instantiate(NYUDSegDataLayer, {'nyud_dir': str(bad), 'split': 'test',
                                                 'tops': ['depth', 'label']}, 2)
    with pytest.raises(DataLayerError, match=r"id '1': depth .*img_1\.png has values <= 0"):
        step(layer, tops)
    layer.advance()
    with pytest.raises(DataLayerError, match=r"id '2': label value 41 is outside the classes 1-40"):
        step(layer, tops)


# ---- SIFT Flow ----------------------------------------------------------------------

def test_siftflow_shifts_semantic_and_geometric_labels(tmp_path):
    truth = make_siftflow(tmp_path, ['coast_arnat59'], ['street_a1'])
    (tmp_path / 'test.txt').write_text('coast_arnat59\n')
    layer, tops = instantiate(SIFTFlowSegDataLayer, {'siftflow_dir': str(tmp_path),
                                                     'split': 'test'}, 3)
    data, sem, geo = step(layer, tops)
    arrays = truth['coast_arnat59']
    np.testing.assert_array_equal(data, bgr_minus(arrays['rgb'], siftflow.MEAN_BGR))
    expected_sem = np.where(arrays['sem'] == 0, 255, arrays['sem'] - 1)
    expected_geo = np.where(arrays['geo'] == -1, 255, arrays['geo'] - 1)
    np.testing.assert_array_equal(sem, expected_sem[np.newaxis, np.newaxis])
    np.testing.assert_array_equal(geo, expected_geo[np.newaxis, np.newaxis])
    assert set(np.unique(geo)) <= {0, 1, 2, 255} and (geo == 255).any()


def test_siftflow_label_outside_the_classes_names_the_id(tmp_path):
    make_siftflow(tmp_path, ['x'], [])
    (tmp_path / 'test.txt').write_text('x\n')
    geo_path = tmp_path / 'GeoLabels' / SIFTFLOW_SCENES / 'x.mat'
    scipy.io.savemat(geo_path, {'S': np.full((3, 4), 4.0)})
    layer, tops = instantiate(SIFTFlowSegDataLayer, {'siftflow_dir': str(tmp_path),
                                                     'split': 'test'}, 3)
    with pytest.raises(DataLayerError, match=r"id 'x' \(geo\): label value 4.0 is outside the "
                                             r"classes 1-3 \(void: -1, 0\)"):
        step(layer, tops)


# ---- PASCAL-Context ---------------------------------------------------------------------

@pytest.fixture
def context(tmp_path):
    truth = make_context(tmp_path / 'VOC2010', tmp_path / 'pascal-context',
                         {'train': ['2008_000001'], 'val': ['2008_000002', '2008_000003']})
    params = {'voc_dir': str(tmp_path / 'VOC2010'), 'context_dir': str(tmp_path / 'pascal-context'),
              'split': 'val', 'mean': PASCAL_MEAN}
    return tmp_path, truth, params


def test_context_maps_the_full_labels_to_59_classes(context):
    _, truth, params = context
    layer, tops = instantiate(PASCALContextSegDataLayer, params, 2)
    seen = set()
    for example_id in ('2008_000002', '2008_000003'):
        data, label = step(layer, tops)
        np.testing.assert_array_equal(data, bgr_minus(truth[example_id]['rgb'],
                                                      np.array(PASCAL_MEAN)))
        expected = context_expected(truth[example_id]['full'])
        np.testing.assert_array_equal(label, expected[np.newaxis, np.newaxis])
        seen |= set(np.unique(expected))
    assert 0 in seen and len(seen) > 5
    # The three spellings that differ between the lists are mapped.
    lookup = layer.lookup
    full = {label.replace(' ', ''): number for number, label in
            (line.split(': ') for line in (context[0] / 'pascal-context/labels.txt')
             .read_text().splitlines())}
    names = pascalcontext.CLASS_NAMES['label']
    for task, spelt in (('diningtable', 'table'), ('bedcloth', 'bedclothes'), ('clothes', 'cloth')):
        assert lookup[int(full[spelt])] == names.index(task)
    assert lookup[int(full['pottedplant'])] == names.index('pottedplant')
    assert lookup[int(full['accordion'])] == 0


def test_context_label_list_errors(context):
    folder, _, params = context
    task_file = folder / 'pascal-context' / '59_labels.txt'
    original = task_file.read_text()
    task_file.write_text(original.replace('1: aeroplane', '1: airplane'))
    with pytest.raises(DataLayerError, match='does not list the 59 classes of CLASS_NAMES'):
        instantiate(PASCALContextSegDataLayer, params, 2)
    task_file.write_text(original.replace('1: aeroplane', 'aeroplane'))
    with pytest.raises(DataLayerError, match=r'59_labels.txt line 1: expected "<number>: <name>"'):
        instantiate(PASCALContextSegDataLayer, params, 2)
    task_file.write_text(original)
    full_file = folder / 'pascal-context' / 'labels.txt'
    full_file.write_text(full_file.read_text().replace(': bedclothes', ': bed clothing'))
    with pytest.raises(DataLayerError, match="labels.txt has no label 'bedclothes'"):
        instantiate(PASCALContextSegDataLayer, params, 2)
    full_file.unlink()
    with pytest.raises(DataLayerError, match=r'labels.txt does not exist: run `make data-pascal'):
        instantiate(PASCALContextSegDataLayer, params, 2)


def test_context_label_map_errors(context):
    folder, truth, params = context
    full = truth['2008_000002']['full'].copy()
    full[0, 0] = 10000
    scipy.io.savemat(folder / 'pascal-context/trainval/2008_000002.mat', {'LabelMap': full})
    scipy.io.savemat(folder / 'pascal-context/trainval/2008_000003.mat',
                     {'LabelMap': truth['2008_000003']['full'] + 0.5})
    layer, tops = instantiate(PASCALContextSegDataLayer, params, 2)
    with pytest.raises(DataLayerError, match=r"id '2008_000002': label value 10000 is not in"):
        step(layer, tops)
    layer.advance()
    with pytest.raises(DataLayerError, match='is not a 2-D map of whole numbers'):
        step(layer, tops)


# ---- inside caffe.Net -------------------------------------------------------------------

def test_every_layer_runs_inside_a_net(tmp_path, nyud_data, context):
    sbdd_truth = make_sbdd(tmp_path / 'sbdd', {'train': ['a', 'b']})
    net = net_with_layer(tmp_path, 'layers.voc', 'SBDDSegDataLayer',
                         {'sbdd_dir': str(tmp_path / 'sbdd'), 'split': 'train',
                          'mean': PASCAL_MEAN, 'prefetch': True}, ['data', 'label'])
    for _ in range(3):
        net.forward()
        label = net.blobs['label'].data[0, 0]
        assert any(arrays['label'].shape == label.shape and (arrays['label'] == label).all()
                   for arrays in sbdd_truth.values())

    folder, truth = nyud_data
    net = net_with_layer(tmp_path, 'layers.nyud', 'NYUDSegDataLayer',
                         {'nyud_dir': str(folder), 'split': 'test', 'tops': ['color', 'hha', 'label']},
                         ['color', 'hha', 'label'])
    net.forward()
    np.testing.assert_array_equal(net.blobs['color'].data, bgr_minus(truth['5003']['color'],
                                                                     nyud.MEAN_BGR))
    assert net.blobs['hha'].data.shape == net.blobs['color'].data.shape

    sift_truth = make_siftflow(tmp_path / 'sift', ['t1'], ['v1', 'v2'])
    (tmp_path / 'sift' / 'trainval.txt').write_text('v1\nv2\n')
    net = net_with_layer(tmp_path, 'layers.siftflow', 'SIFTFlowSegDataLayer',
                         {'siftflow_dir': str(tmp_path / 'sift'), 'split': 'trainval',
                          'randomize': False}, ['data', 'sem', 'geo'])
    net.forward()
    np.testing.assert_array_equal(net.blobs['data'].data, bgr_minus(sift_truth['v1']['rgb'],
                                                                    siftflow.MEAN_BGR))
    assert net.blobs['sem'].data.shape == net.blobs['geo'].data.shape == (
        (1, 1) + sift_truth['v1']['sem'].shape)

    _, context_truth, params = context
    net = net_with_layer(tmp_path, 'layers.pascalcontext', 'PASCALContextSegDataLayer', params,
                         ['data', 'label'])
    net.forward()
    np.testing.assert_array_equal(net.blobs['label'].data[0, 0],
                                  context_expected(context_truth['2008_000002']['full']))
