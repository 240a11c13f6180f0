"""The whole preparation of each dataset, served by a local HTTP server on 127.0.0.1
from small archives in the real layouts; then the layers read the result."""
import hashlib
import io
import json
import shutil

import numpy as np
import pytest

from data import prepare as prep
from data.fetch import Fetcher
from checks.fixtures import FileServer, write_archives
from data.sources import SOURCES, Source
from layers.nyud import NYUDSegDataLayer
from layers.pascalcontext import PASCALContextSegDataLayer
from layers.siftflow import SIFTFlowSegDataLayer
from layers.voc import SBDDSegDataLayer, VOCSegDataLayer
from test_data_fixtures import context_expected, instantiate, step

MEAN = [104.00699, 116.66877, 122.67892]
VOC_VAL = ['2008_000001', '2008_000002', '2008_000003', '2008_000004']
SBD_SPLITS = {'train': ['2008_000002', '2008_000004', '2009_000001'], 'val': ['2009_000002']}
SIFT_TEST = ['coast_arnat59', 'street_par1']
SIFT_TRAINVAL = ['forest_for3', 'highway_bost181', 'mountain_n4', 'opencountry_a1']


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope='module')
def served(tmp_path_factory):
    """Archives laid out as upstream ships them, and a sources table for them."""
    stage = tmp_path_factory.mktemp('stage')
    served = tmp_path_factory.mktemp('served')
    truth = write_archives(served, stage, {
        'voc': {'train': ['2007_000001'], 'val': VOC_VAL}, 'sbd': SBD_SPLITS,
        'nyud': {'train': ['5001', '5002'], 'val': ['5003'], 'test': ['5004']},
        'siftflow': {'test': SIFT_TEST, 'trainval': SIFT_TRAINVAL},
        'context': {'train': ['2008_000010'], 'val': ['2008_000011', '2008_000012']},
    }, nyud_lists='mat', unannotated=['highway_bost181'])
    # NYUD goes unverified, as upstream publishes no checksum for it.
    sources = {key: Source(key, source.filename, 'http://upstream.invalid/' + source.filename,
                           md5=None if key == 'nyud' else md5(served / source.filename))
               for key, source in SOURCES.items()}
    return served, sources, truth


@pytest.fixture
def server(served):
    with FileServer(served[0]) as running:
        yield running


def fetcher_for(root, server, sources, **options):
    options.setdefault('mirror', server.url)
    return Fetcher(root / 'downloads', sources=sources, retry_wait=0, out=io.StringIO(), **options)


def test_voc_prepares_voc2011_sbd_and_seg11valid(tmp_path, served, server, monkeypatch):
    _, sources, truth = served
    root = tmp_path / 'data'
    (root / 'pascal' / '.VOC2011.unpacking' / 'junk').mkdir(parents=True)  # an interrupted run
    fetch = fetcher_for(root, server, sources)
    prep.prepare('voc', root, fetch)
    seg11valid = root / 'pascal/VOC2011/ImageSets/Segmentation/seg11valid.txt'
    assert seg11valid.read_text().split() == ['2008_000001', '2008_000003']
    assert 'seg11valid: 2 ids (the reference has 736)' in fetch.out.getvalue()
    assert json.loads((root / 'downloads/voc.prepared').read_text())['dataset'] == 'voc'
    assert not (root / 'pascal' / '.VOC2011.unpacking').exists()
    assert sorted(p.name for p in (root / 'sbdd/dataset').iterdir()) == \
        ['cls', 'img', 'train.txt', 'val.txt']

    monkeypatch.setenv('FCN_DATA_DIR', str(root))
    layer, tops = instantiate(VOCSegDataLayer, {'voc_dir': 'pascal/VOC2011', 'split': 'seg11valid',
                                                'mean': MEAN}, 2)
    label = step(layer, tops)[1]
    np.testing.assert_array_equal(label[0, 0], truth['voc']['2008_000001']['label'])
    layer, tops = instantiate(SBDDSegDataLayer, {'sbdd_dir': 'sbdd/dataset', 'split': 'train',
                                                 'mean': MEAN}, 2)
    assert layer.ids == SBD_SPLITS['train'] and step(layer, tops)[1].shape[1] == 1

    # Finished steps are skipped, with or without the archives.
    requests = len(server.requests)
    prep.prepare('voc', root, fetcher_for(root, server, sources))
    shutil.rmtree(root / 'downloads')
    again = fetcher_for(root, server, sources)
    prep.prepare('voc', root, again)
    assert len(server.requests) == requests == 2
    assert '{} is in place'.format(root / 'pascal/VOC2011') in again.out.getvalue()
    assert seg11valid.read_text().split() == ['2008_000001', '2008_000003']


def test_voc_from_a_folder_of_archives_needs_no_network(tmp_path, served, server):
    folder, sources, _ = served
    root = tmp_path / 'data'
    fetch = fetcher_for(root, server, sources, archives=[folder], mirror='http://127.0.0.1:9/')
    prep.prepare('voc', root, fetch)
    assert server.requests == []
    assert (root / 'pascal/VOC2011/ImageSets/Segmentation/seg11valid.txt').exists()
    assert not (root / 'downloads' / 'benchmark.tgz').exists()


def test_an_existing_folder_without_the_expected_content_is_not_touched(tmp_path, served, server):
    _, sources, _ = served
    root = tmp_path / 'data'
    (root / 'pascal' / 'VOC2011' / 'JPEGImages').mkdir(parents=True)
    with pytest.raises(prep.PrepareError, match=r'VOC2011 exists but lacks SegmentationClass, '
                                                r'ImageSets/Segmentation/val.txt: move it away'):
        prep.prepare('voc', root, fetcher_for(root, server, sources))
    assert server.requests == []


def test_the_wrong_archive_is_reported(tmp_path, served, server):
    _, sources, _ = served
    root = tmp_path / 'data'
    swapped = dict(sources, voc2011=Source('voc2011', 'benchmark.tgz', 'http://x/benchmark.tgz',
                                           md5=sources['sbd'].md5))
    with pytest.raises(prep.ExtractError, match='benchmark.tgz holds no folder with JPEGImages'):
        prep.prepare('voc', root, fetcher_for(root, server, swapped))


def test_nyud_derives_trainval_from_the_packed_lists(tmp_path, served, server, monkeypatch):
    _, sources, truth = served
    root = tmp_path / 'data'
    fetch = fetcher_for(root, server, sources)
    prep.prepare('nyud', root, fetch)
    lists = {split: (root / 'nyud' / (split + '.txt')).read_text().split()
             for split in ('train', 'val', 'trainval', 'test')}
    assert lists == {'train': ['5001', '5002'], 'val': ['5003'], 'trainval': ['5001', '5002', '5003'],
                     'test': ['5004']}
    said = fetch.out.getvalue()
    assert 'NOTE: no checksum is published for nyud.tar.gz; recorded its size' in said
    assert (root / 'downloads' / 'nyud.tar.gz.digests.json').is_file()
    assert 'nyud trainval: 3 ids (the reference has 795)' in said
    monkeypatch.setenv('FCN_DATA_DIR', str(root))
    layer, tops = instantiate(NYUDSegDataLayer, {'nyud_dir': 'nyud', 'split': 'test',
                                                 'tops': ['color', 'label']}, 2)
    label = step(layer, tops)[1]
    raw = truth['nyud']['5004']['raw']
    np.testing.assert_array_equal(label[0, 0], np.where(raw == 0, 255, raw.astype(int) - 1))


def test_nyud_without_split_lists_is_an_error(tmp_path, served, server):
    _, sources, _ = served
    root = tmp_path / 'data'
    prep.prepare('nyud', root, fetcher_for(root, server, sources))
    for split in ('trainval', 'test', 'train', 'val'):
        (root / 'nyud' / (split + '.txt')).unlink()
        (root / 'nyud' / (split + '.mat')).unlink(missing_ok=True)
    with pytest.raises(prep.PrepareError, match=r'nyud has no trainval split \(trainval.txt or '
                                                r'trainval.mat\)'):
        prep.prepare('nyud', root, fetcher_for(root, server, sources))


def test_siftflow_splits_leave_out_unannotated_images(tmp_path, served, server, monkeypatch):
    _, sources, truth = served
    root = tmp_path / 'data'
    fetch = fetcher_for(root, server, sources)
    prep.prepare('siftflow', root, fetch)
    assert (root / 'sift-flow/test.txt').read_text().split() == SIFT_TEST
    assert (root / 'sift-flow/trainval.txt').read_text().split() == \
        ['forest_for3', 'mountain_n4', 'opencountry_a1']
    assert 'left out, no annotation: highway_bost181' in fetch.out.getvalue()
    monkeypatch.setenv('FCN_DATA_DIR', str(root))
    layer, tops = instantiate(SIFTFlowSegDataLayer, {'siftflow_dir': 'sift-flow', 'split': 'test'}, 3)
    sem = step(layer, tops)[1]
    raw = truth['siftflow']['coast_arnat59']['sem']
    np.testing.assert_array_equal(sem[0, 0], np.where(raw == 0, 255, raw - 1))


def test_pascalcontext_brings_voc2010_annotations_and_names(tmp_path, served, server, monkeypatch):
    _, sources, truth = served
    root = tmp_path / 'data'
    fetch = fetcher_for(root, server, sources)
    prep.prepare('pascalcontext', root, fetch)
    assert 'context val: 2 ids (the reference has 5105)' in fetch.out.getvalue()
    monkeypatch.setenv('FCN_DATA_DIR', str(root))
    layer, tops = instantiate(PASCALContextSegDataLayer, {
        'voc_dir': 'pascal/VOC2010', 'context_dir': 'pascal-context', 'split': 'val',
        'mean': MEAN}, 2)
    label = step(layer, tops)[1]
    np.testing.assert_array_equal(label[0, 0], context_expected(truth['context']['2008_000011']['full']))


def test_command_line(tmp_path, served, server, capsys, monkeypatch):
    folder, _, _ = served
    assert prep.main(['--list']) == 0
    listed = capsys.readouterr().out
    assert all(key in listed for key in ('voc2011', 'sbd', 'voc2010', 'context59', 'nyud', 'siftflow'))
    assert 'none published: size and digests recorded at the first download' in listed
    with pytest.raises(SystemExit) as exit_status:
        prep.main(['--help'])
    assert exit_status.value.code == 0
    with pytest.raises(SystemExit):
        prep.main(['voc', '--url', 'voc2011'])
    assert 'expected KEY=URL' in capsys.readouterr().err

    # SIFT Flow has no recorded checksum upstream, so the fixture archive passes.
    root = tmp_path / 'data'
    monkeypatch.setenv('FCN_DATA_MIRROR', server.url)
    assert prep.main(['siftflow', '--data-dir', str(root)]) == 0
    assert (root / 'downloads/siftflow.prepared').exists()
    assert 'siftflow test: 2 ids (the reference has 200)' in capsys.readouterr().out
    # The VOC fixtures are not the genuine archives: verification refuses them.
    assert prep.main(['voc', '--data-dir', str(root), '--archives', str(folder)]) == 1
    err = capsys.readouterr().err
    assert 'error: VOCtrainval_25-May-2011.tar fails its checksum twice' in err
