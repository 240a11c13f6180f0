"""The published weights: the released nets' layer names and shapes against the project's
nets, fetching through the data code (local HTTP server on 127.0.0.1, caffemodels made
here with the released layer names), scoring with `--weights released`, and inference on
images of every size and mode. No test downloads real weights."""
import dataclasses
import functools
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import caffe
from caffe.proto import caffe_pb2
from google.protobuf import text_format

from fcn import caffemodel, inference, paths, runtimes
from solve import infer as infer_command
from fcn import nets
from solve import report
from fcn import evaluation
from solve import score as score_command
from fcn import pictures
from data import prepare as prep
from checks.fixtures import FileServer, make_voc
from models import generate
from data import weights as published
from models.specs import MODELS
from fcn.nets import UsageError
from released_nets import REFERENCE, write_released
from test_models_nets import with_input_layer

caffe.set_mode_cpu()
from fcn.paths import REPO
NARROW = 1 / 16
MEAN = (104.00699, 116.66877, 122.67892)


def narrow_files(models_dir, model, width=NARROW):
    """The project's prototxts of `model` at a small width, as `make models` writes them."""
    spec = dataclasses.replace(MODELS[model], width=width)
    for path, text in generate.render(spec).items():
        (models_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (models_dir / path).write_text(text)
    return models_dir / model


def read_net(path):
    net = caffe_pb2.NetParameter()
    text_format.Merge(Path(path).read_text(), net)
    return net


def narrow_deploy_net(tmp_path, model):
    """`model`'s narrow deploy net with weights in the release's layout, on the Caffe
    runtime as infer.py runs it."""
    folder = narrow_files(tmp_path / 'models', model)
    weights = tmp_path / 'w.caffemodel'
    write_released(weights, model)
    return runtimes.CaffeRuntime(
        instantiate(read_net(folder / 'deploy.prototxt'), tmp_path, weights))


def instantiate(net_param, folder, weights=None):
    path = folder / 'net.prototxt'
    path.write_text(str(net_param))
    return caffe.Net(str(path), caffe.TEST) if weights is None else \
        caffe.Net(str(path), str(weights), caffe.TEST)


# ---- names and shapes -------------------------------------------------------------------

def test_the_table_names_every_release_and_classifier():
    assert sorted(published.RELEASED) == sorted(REFERENCE)
    assert set(published.CLASSIFIERS) == {'vgg16', 'caffenet', 'googlenet'}
    sha1 = {source.filename: source.sha1 for source in published.WEIGHTS.values() if source.sha1}
    assert sha1 == {  # the published SHA-1s (models/README.md lists the rest as recorded)
        'VGG_ILSVRC_16_layers.caffemodel': '9363e1f6d65f7dba68c4f27a1e62105cdf6c4e24',
        'bvlc_reference_caffenet.caffemodel': '4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46',
        'bvlc_googlenet.caffemodel': '405fc5acd08a3bb12de8ee5e23a96bec22f08204',
        'fcn32s-heavy-pascal.caffemodel': '05eb922d7829c39448f57e5ab9d8cd75d6c0be6d',
        'fcn8s-heavy-pascal.caffemodel': 'c449ea74dd7d83751d1357d6a8c323fcf4038962'}
    for name, source in published.RELEASED.items():
        assert source.url == 'http://dl.caffe.berkeleyvision.org/' + source.filename
        assert source.key == name.replace('-', '_') and source.key.isidentifier()
    # one key space with the datasets, for --url KEY=URL and FCN_URL_<KEY>
    assert len(prep.ALL_SOURCES) == len(prep.SOURCES) + len(published.SOURCES)


@pytest.mark.parametrize('model', sorted(REFERENCE))
def test_the_val_net_defines_the_released_layers_as_the_deploy_net(model):
    """score.py loads the val net, infer.py the deploy net: the layers holding parameters
    are defined alike in both. (Their full-size shapes against the release's are checked
    where test_models_nets instantiates every deploy net.)"""
    deploy = read_net(REPO / 'models' / model / 'deploy.prototxt')
    val = {layer.name: layer for layer in read_net(REPO / 'models' / model / 'val.prototxt').layer}
    released = REFERENCE[model](1.0)
    defined = [layer for layer in deploy.layer if layer.name in released]
    assert sorted(layer.name for layer in defined) == sorted(released)
    for layer in defined:
        twin = val[layer.name]
        assert (twin.type, list(twin.bottom), twin.convolution_param, twin.scale_param) == \
            (layer.type, list(layer.bottom), layer.convolution_param, layer.scale_param)


@pytest.mark.parametrize('model', sorted(REFERENCE))
def test_released_weights_load_by_name_into_deploy_and_val_nets(model, tmp_path):
    """A file with the released names (narrow) fills every parameter of the project's
    nets, each with the values written under its name."""
    folder = narrow_files(tmp_path / 'models', model)
    weights = tmp_path / 'released.caffemodel'
    written = write_released(weights, model)
    spec = MODELS[model]
    for variant in ('deploy', 'val'):
        net_param = read_net(folder / f'{variant}.prototxt')
        if variant == 'val':
            net_param = with_input_layer(net_param, spec, (9, 11))
        (tmp_path / variant).mkdir()
        net = instantiate(net_param, tmp_path / variant, weights)
        assert set(net.params) == set(written)
        for name, arrays in written.items():
            for blob, array in zip(net.params[name], arrays):
                np.testing.assert_array_equal(blob.data, array)
        assert nets.layers_without_weights(net, net_param, caffemodel.checked_layers(weights),
                                           weights, folder / f'{variant}.prototxt') == []


# ---- fetching --------------------------------------------------------------------------

@pytest.fixture
def served(tmp_path, monkeypatch):
    """A local server holding released-format caffemodels under their published names;
    the weights folder, runs and models redirected into tmp_path."""
    folder = tmp_path / 'served'
    for seed, model in enumerate(('voc-fcn16s', 'voc-fcn8s', 'voc-fcn8s-atonce')):
        write_released(folder / published.RELEASED[model].filename, model, seed=seed)
    (folder / 'VGG_ILSVRC_16_layers.caffemodel').write_bytes(b'not the VGG16 classifier')
    monkeypatch.setattr(prep, 'Fetcher', functools.partial(prep.Fetcher, retry_wait=0))
    monkeypatch.setattr(published, 'WEIGHTS_DIR', tmp_path / 'weights')
    monkeypatch.setattr(paths, 'RUNS_DIR', tmp_path / 'runs')
    monkeypatch.setattr(paths, 'MODELS_DIR', tmp_path / 'models')
    for variable in ('FCN_DATA_MIRROR', 'FCN_ARCHIVES'):
        monkeypatch.delenv(variable, raising=False)
    for key in prep.ALL_SOURCES:
        monkeypatch.delenv('FCN_URL_' + key.upper(), raising=False)
    with FileServer(folder) as server:
        yield server


def test_released_weights_download_verified_recorded_and_resumed(tmp_path, served, monkeypatch,
                                                                  capsys):
    monkeypatch.setenv('FCN_DATA_MIRROR', served.url)
    name = published.RELEASED['voc-fcn16s'].filename
    served.drop_after[name] = 50000
    assert prep.main(['--weights', 'voc-fcn16s']) == 0
    path = tmp_path / 'weights' / 'released' / name
    assert path.read_bytes() == (served.folder / name).read_bytes()
    assert served.requests == [(name, None), (name, 'bytes=50000-')]  # cut, then resumed
    record = json.loads(path.with_name(name + '.digests.json').read_text())
    assert record['sha1'] == hashlib.sha1(path.read_bytes()).hexdigest()
    assert record['size'] == path.stat().st_size
    out = capsys.readouterr().out
    assert 'NOTE: no checksum is published for {}'.format(name) in out
    # Asked again (by net or by file, as make does), nothing is fetched.
    assert prep.main(['--weights', str(path)]) == 0
    assert len(served.requests) == 2


def test_a_published_checksum_refuses_another_file_with_what_to_do(tmp_path, served, monkeypatch,
                                                                  capsys):
    monkeypatch.setenv('FCN_DATA_MIRROR', served.url)
    assert prep.main(['--weights', 'voc-fcn8s']) == 1
    err = capsys.readouterr().err
    got = hashlib.sha1((served.folder / 'fcn8s-heavy-pascal.caffemodel').read_bytes()).hexdigest()
    assert ('error: fcn8s-heavy-pascal.caffemodel fails its checksum twice from {}/'
            'fcn8s-heavy-pascal.caffemodel (sha1 {} (expected '
            'c449ea74dd7d83751d1357d6a8c323fcf4038962)): the server holds another file; point '
            '--url voc_fcn8s=URL or --mirror at a genuine copy'.format(served.url, got)) in err
    assert not list((tmp_path / 'weights' / 'released').iterdir())  # nothing half-kept
    # The ILSVRC classifiers go the same way, under their own keys.
    monkeypatch.delenv('FCN_DATA_MIRROR')
    monkeypatch.setenv('FCN_URL_VGG16', served.url + '/VGG_ILSVRC_16_layers.caffemodel')
    assert prep.main(['--weights', 'vgg16']) == 1
    assert 'sha1 {} (expected 9363e1f6d65f7dba68c4f27a1e62105cdf6c4e24)'.format(
        hashlib.sha1(b'not the VGG16 classifier').hexdigest()) in capsys.readouterr().err
    assert served.requests[-1] == ('VGG_ILSVRC_16_layers.caffemodel', None)
    assert prep.main(['--weights', 'weights/nothing.caffemodel']) == 1
    assert "'weights/nothing.caffemodel' names no published weights" in capsys.readouterr().err


def test_archives_and_url_overrides_serve_weights_as_they_serve_datasets(tmp_path, served,
                                                                         monkeypatch):
    archive = tmp_path / 'archive'
    archive.mkdir()
    name = published.RELEASED['voc-fcn16s'].filename
    (archive / name).write_bytes((served.folder / name).read_bytes())
    monkeypatch.setenv('FCN_ARCHIVES', str(archive))
    path = nets.weights_file('voc-fcn16s', 'released')  # what score.py and infer.py call
    assert path.read_bytes() == (archive / name).read_bytes() and served.requests == []
    elsewhere = served.folder / 'elsewhere.caffemodel'
    elsewhere.write_bytes(b'the at-once net, from another host')
    monkeypatch.setenv('FCN_URL_VOC_FCN8S_ATONCE', served.url + '/elsewhere.caffemodel')
    path = nets.weights_file('voc-fcn8s-atonce', 'released')
    assert path == tmp_path / 'weights/released/fcn8s-atonce-pascal.caffemodel'
    assert path.read_bytes() == elsewhere.read_bytes()
    assert served.requests == [('elsewhere.caffemodel', None)]
    with pytest.raises(UsageError, match='nyud-fcn32s-color-d has no released weights'):
        nets.weights_file('nyud-fcn32s-color-d', 'released')


# ---- scoring ---------------------------------------------------------------------------

def forward_by_hand(net, rgb):
    """The deploy net's labels for an RGB image, the reference way."""
    bgr = rgb[:, :, ::-1].astype(np.float32) - np.array(MEAN, np.float32)
    net.blobs['data'].reshape(1, 3, *rgb.shape[:2])
    net.blobs['data'].data[0] = bgr.transpose(2, 0, 1)
    net.forward()
    return net.blobs['score'].data[0].argmax(0)


def test_eval_released_scores_the_val_split_as_score_py_by_hand(tmp_path, served, monkeypatch):
    ids = ['2008_000001', '2008_000002', '2009_000003']
    data = tmp_path / 'data'
    truth = make_voc(data / 'pascal' / 'VOC2011', {'seg11valid': ids})
    narrow_files(tmp_path / 'models', 'voc-fcn16s')
    monkeypatch.setenv('FCN_DATA_DIR', str(data))
    monkeypatch.setenv('FCN_DATA_MIRROR', served.url)
    score_command.main(['voc-fcn16s', '--weights', 'released', '--data-dir', str(data), '--cpu'])
    released = json.loads((tmp_path / 'runs/released/voc-fcn16s/score.json').read_text())
    weights = tmp_path / 'weights/released/fcn16s-heavy-pascal.caffemodel'
    assert released['weights'] == str(weights) and released['released'] is True
    assert released['split'] == 'seg11valid' and released['n_images'] == len(ids)
    # beside the report: its per-image counts and the predictions the results page shows
    folder = tmp_path / 'runs/released/voc-fcn16s'
    (_, images), = evaluation.load_image_counts(folder / 'score-images.npz').values()
    assert images.ids == ids
    assert sorted(p.stem for p in (folder / 'predictions').glob('*.png')) == ids
    # score.py run by hand on the downloaded file
    by_hand = tmp_path / 'by-hand.json'
    score_command.main(['voc-fcn16s', '--weights', str(weights), '--data-dir', str(data), '--cpu',
                '--json', str(by_hand)])
    by_hand = json.loads(by_hand.read_text())
    for key in evaluation.METRIC_KEYS + ('confusion',):
        assert released[key] == by_hand[key], key
    # and without score.py: the deploy net over the images, the metrics from their formulas
    net = instantiate(read_net(tmp_path / 'models/voc-fcn16s/deploy.prototxt'), tmp_path, weights)
    hist = np.zeros((21, 21), np.int64)
    for example in ids:
        gt = truth[example]['label'].astype(np.int64)
        pred = forward_by_hand(net, truth[example]['rgb'])
        counted = gt != 255
        np.add.at(hist, (gt[counted], pred[counted]), 1)
    assert released['confusion'] == hist.tolist()
    with np.errstate(invalid='ignore', divide='ignore'):
        iu = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
    assert released['mean_iu'] == pytest.approx(np.nanmean(iu))
    assert (hist.sum(0) > 0).sum() > 1  # the random net predicts several classes


def test_released_weights_lacking_layers_are_refused(tmp_path, served, monkeypatch):
    name = published.RELEASED['voc-fcn16s'].filename
    write_released(tmp_path / 'weights/released' / name, 'voc-fcn16s', leave_out=('score_pool4',))
    narrow_files(tmp_path / 'models', 'voc-fcn16s')
    make_voc(tmp_path / 'data/pascal/VOC2011', {'seg11valid': ['2008_000001']})
    monkeypatch.setenv('FCN_DATA_DIR', str(tmp_path / 'data'))
    with pytest.raises(UsageError, match=r'has no weights for 1 layers of .*voc-fcn16s/val'
                                         r'\.prototxt \(score_pool4\): it holds another '):
        score_command.main(['voc-fcn16s', '--weights', 'released', '--cpu'])


# ---- inference -------------------------------------------------------------------------

def images_of_every_mode(folder, rng):
    """Images in the modes users have, and the RGB each should be read as."""
    expected = {}
    rgb = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / 'photo.png')
    expected['photo'] = rgb
    grey = rng.integers(0, 256, (40, 17), dtype=np.uint8)
    Image.fromarray(grey, 'L').save(folder / 'grey.png')
    expected['grey'] = np.repeat(grey[..., None], 3, 2)
    rgba = rng.integers(0, 256, (19, 45, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rgba[..., 3] < 128, 0, 255)
    Image.fromarray(rgba, 'RGBA').save(folder / 'transparent.png')
    expected['transparent'] = np.where(rgba[..., 3:] == 0, 255, rgba[..., :3])
    cmyk = Image.fromarray(rng.integers(0, 256, (12, 9, 4), dtype=np.uint8), 'CMYK')
    cmyk.save(folder / 'print.tif')
    expected['print'] = np.array(cmyk.convert('RGB'))
    deep = rng.integers(0, 65536, (3, 5), dtype=np.uint16)
    deep[0, 0] = 65535
    Image.fromarray(deep).save(folder / 'deep.png')
    assert Image.open(folder / 'deep.png').mode.startswith('I')
    expected['deep'] = np.repeat(np.round(deep / 65535 * 255)[..., None], 3, 2)
    dot = rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)  # one pixel: any size works
    Image.fromarray(dot).save(folder / 'dot.bmp')
    expected['dot'] = dot
    return expected


def test_infer_segments_a_folder_of_every_size_and_mode(tmp_path, served, monkeypatch, capsys):
    narrow_files(tmp_path / 'models', 'voc-fcn8s-atonce')
    monkeypatch.setenv('FCN_DATA_MIRROR', served.url)
    images = tmp_path / 'mine'
    images.mkdir()
    expected = images_of_every_mode(images, np.random.default_rng(3))
    (images / 'notes.txt').write_text('not an image')
    infer_command.main(['voc-fcn8s-atonce', '--weights', 'released', str(images), '--probabilities',
                '--cpu'])
    out = tmp_path / 'runs/released/voc-fcn8s-atonce/infer'
    assert 'infer voc-fcn8s-atonce: 6/6' in capsys.readouterr().err
    weights = tmp_path / 'weights/released/fcn8s-atonce-pascal.caffemodel'
    net = instantiate(read_net(tmp_path / 'models/voc-fcn8s-atonce/deploy.prototxt'), tmp_path,
                      weights)
    spec = MODELS['voc-fcn8s-atonce']
    names = nets.class_names(spec, spec.heads[0])
    for stem, rgb in expected.items():
        label = pictures.read_label_png(out / f'{stem}.png')
        np.testing.assert_array_equal(label, forward_by_hand(net, rgb.astype(np.uint8)))
        with Image.open(out / f'{stem}_overlay.png') as overlay:
            sheet = np.array(overlay)
        height, width = label.shape
        np.testing.assert_array_equal(sheet[:height, :width],
                                      pictures.overlay(rgb.astype(np.uint8), label))
        legend = sheet[:, width:].reshape(-1, 3)
        colours = {tuple(c) for c in legend}
        for class_id in range(21):
            colour = tuple(pictures.PALETTE[class_id])
            if class_id in label:
                assert colour in colours, (stem, names[class_id])
            elif len(set(colour)) > 1:  # greys could be anti-aliased text
                assert colour not in colours, (stem, names[class_id])
        with np.load(out / f'{stem}_prob.npz') as saved:
            prob, classes = saved['prob'], list(saved['classes'])
        assert prob.shape == (21, height, width) and classes == list(names)
        np.testing.assert_allclose(prob.sum(0), 1, rtol=1e-5)
        np.testing.assert_array_equal(prob.argmax(0), label)
    assert not (out / 'notes.png').exists()


def test_infer_shrinks_large_images_for_the_net_and_labels_them_at_their_size(tmp_path):
    net = narrow_deploy_net(tmp_path, 'voc-fcn8s')
    rgb = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / 'big.png')
    inference.infer_files(net, MODELS['voc-fcn8s'].heads, np.array(MEAN, np.float32),
                      [tmp_path / 'big.png'], tmp_path / 'out', max_side=30)
    label = pictures.read_label_png(tmp_path / 'out' / 'big.png')
    assert label.shape == (60, 90)
    small = np.array(Image.fromarray(rgb).resize((30, 20), Image.Resampling.BILINEAR))
    scores = inference.segment(net, 'data', small, np.array(MEAN, np.float32),
                           MODELS['voc-fcn8s'].heads)['label']
    np.testing.assert_array_equal(label, inference.resized_scores(scores, (60, 90)).argmax(0))


def test_infer_two_heads_and_refused_inputs(tmp_path):
    net = narrow_deploy_net(tmp_path, 'siftflow-fcn32s')
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'coast.jpg')
    written = inference.infer_files(net, MODELS['siftflow-fcn32s'].heads, np.zeros(3, np.float32),
                                [tmp_path / 'coast.jpg'], tmp_path / 'out')
    assert [p.name for p in written] == ['coast_sem.png', 'coast_geo.png']
    assert pictures.read_label_png(written[1]).max() < 3
    with pytest.raises(UsageError, match='no such image or folder: .*missing.png'):
        inference.image_paths([tmp_path / 'missing.png'])
    (tmp_path / 'other').mkdir()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / 'other' / 'coast.png')
    with pytest.raises(UsageError, match='would write the same outputs'):
        inference.image_paths([tmp_path / 'coast.jpg', tmp_path / 'other'])
    (tmp_path / 'broken.png').write_bytes(b'\x89PNG broken')
    with pytest.raises(UsageError, match='cannot read image .*broken.png'):
        inference.read_rgb(tmp_path / 'broken.png')


# ---- the report and the make rules -------------------------------------------------------

def test_report_sets_published_released_and_own_scores_side_by_side(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setattr(paths, 'RUNS_DIR', tmp_path / 'runs')

    def scored(path, document):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document))
    scored(tmp_path / 'runs/released/voc-fcn8s/score.json',
           {'mean_iu': 0.6532, 'split': 'seg11valid', 'n_images': 736})
    scored(tmp_path / 'runs/voc-fcn8s/score.json',
           {'mean_iu': 0.612, 'split': 'seg11valid', 'n_images': 736})
    scored(tmp_path / 'runs/released/siftflow-fcn16s/score.json',
           {'sem': {'mean_iu': 0.401, 'n_images': 200}, 'geo': {'mean_iu': 0.9}, 'split': 'test'})
    report.main([])
    text = (tmp_path / 'runs/report/reproduction.md').read_text()
    assert ('| voc-fcn8s | 65.5 (seg11valid) | reference README | 65.3 (seg11valid, 736 images) '
            '| 61.2 (seg11valid, 736 images) | -0.2 |') in text
    assert '| siftflow-fcn16s | 39.5 (test) |' in text and '| 40.1 (test, 200 images) |' in text
    assert ('- voc-fcn8s: the released weights score 65.3 mean IU on seg11valid here; '
            'reference README says 65.5.') in text
    assert '| voc-fcn16s | 65.0 (seg11valid) | reference README | - | - | - |' in text
    assert text in capsys.readouterr().out
    assert (tmp_path / 'runs/report/reproduction.png').read_bytes()[:4] == b'\x89PNG'


def test_make_rules_fetch_score_and_report_from_the_tables(tmp_path):
    data = tmp_path / 'data'
    (data / 'downloads').mkdir(parents=True)
    (data / 'downloads' / 'voc.prepared').touch()
    # -B: every step planned, whatever is on disk already
    plan = subprocess.run(['make', '-n', '-B', 'eval-voc-fcn8s', 'released-nyud-fcn32s-hha',
                           'eval-released', f'FCN_DATA_DIR={data}'], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout
    assert ('-m data.prepare --weights weights/released/fcn8s-heavy-pascal.caffemodel'
            in plan)
    assert ('solve/score.py voc-fcn8s --weights released --json '
            'runs/released/voc-fcn8s/score.json --cpu') in plan
    assert '-m data.prepare --weights weights/released/nyud-fcn32s-hha-heavy.caffemodel' in plan
    assert 'scored the released weights of: voc-fcn32s voc-fcn16s voc-fcn8s ' in plan
    assert 'solve/score.py nyud-fcn32s-hha' not in plan  # its dataset is not prepared
    refused = subprocess.run(['make', 'eval-nyud-fcn32s-color-d'], cwd=REPO,
                             capture_output=True, text=True)
    assert refused.returncode != 0
    assert 'error: no released weights for nyud-fcn32s-color-d' in refused.stdout
    makefile = (REPO / 'Makefile').read_text()
    for name in published.CLASSIFIERS:  # the surgery rules ask for the table's files
        assert f' $(CLASSIFIER_DIR)/{published.WEIGHTS[name].filename} | caffe' in makefile
