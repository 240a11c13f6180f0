"""Every model of the table trains as the reference trained it: its solver values, how long
it runs and how often it is scored, what it starts from, and what its weights are at
iteration 0.

The expectations are written from the reference's published solver files and solve
scripts (and the paper's recipe for FCN-GoogLeNet), never read from the generators.
Initialisation runs the project's own path (start.training_run, trainer.Trainer.start)
on stand-in weights made here: random ILSVRC classifiers carried over by the project's
surgery, random earlier stages. Every model is checked at 1/16 of its width on an input of
its dataset's real size (the properties do not depend on width); one model per body is
checked again at full width, with classifiers of the real shapes, on a smaller input.
"""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

import caffe
from caffe.io import blobproto_to_array
from caffe.proto import caffe_pb2
from models import generate, parts
from models.specs import BASE_NETS, MODELS
from test_models_nets import with_input_layer

from fcn import paths
from fcn.training import start
from fcn import surgery
from fcn.training import trainer
from checks.rehearsal import random_net_file

caffe.set_mode_cpu()

SEGMENTATION = sorted(name for name, spec in MODELS.items() if spec.task == 'segmentation')
NARROW = 1 / 16
# Real image sizes (height, width): a PASCAL image, NYUDv2 after its crop, SIFT Flow, toy.
REAL_SIZE = {'voc': (375, 500), 'pascalcontext': (375, 500), 'nyud': (425, 560),
             'siftflow': (256, 256), 'toy': (128, 128)}

# ---- the reference's solvers and scripts ------------------------------------------------
# From the release's solver.prototxt files: all say lr_policy fixed, weight_decay 0.0005,
# display 20, average_loss 20, test_interval 999999999, test_initialization false.
COMMON = dict(lr_policy='fixed', weight_decay=0.0005, display=20, average_loss=20,
              test_interval=999999999, test_initialization=False)
# model: base_lr, momentum, iter_size, max_iter, test_iter, snapshot (None: not written),
# then from the solve scripts: the run length (K x N of `for _ in range(K):
# solver.step(N)`) and the validation cadence N. FCN-GoogLeNet, never released, takes the
# paper's recipe (CVPR 2015, section 4.3) on FCN-AlexNet's schedule.
REFERENCE = {
    'voc-fcn32s': (1e-10, 0.99, 1, 100000, 736, 4000, 25 * 4000, 4000),
    'voc-fcn16s': (1e-12, 0.99, 1, 100000, 736, 4000, 25 * 4000, 4000),
    'voc-fcn8s': (1e-14, 0.99, 1, 100000, 736, 4000, 25 * 4000, 4000),
    'voc-fcn8s-atonce': (1e-10, 0.99, 1, 300000, 736, 4000, 75 * 4000, 4000),
    'voc-fcn-alexnet': (1e-4, 0.9, 20, 100000, 736, 4000, 25 * 4000, 4000),
    'voc-fcn-googlenet': (5e-5, 0.9, 20, 100000, 736, 4000, 25 * 4000, 4000),
    'nyud-fcn32s-color': (1e-10, 0.99, 1, 300000, 654, 2000, 50 * 2000, 2000),
    'nyud-fcn32s-hha': (1e-10, 0.99, 1, 300000, 654, 2000, 50 * 2000, 2000),
    'nyud-fcn32s-color-d': (1e-10, 0.99, 1, 300000, 654, 2000, 50 * 2000, 2000),
    'nyud-fcn32s-color-hha': (1e-12, 0.99, 1, 300000, 654, 2000, 50 * 2000, 2000),
    'siftflow-fcn32s': (1e-10, 0.99, 1, 300000, 200, None, 50 * 2000, 2000),
    'siftflow-fcn16s': (1e-12, 0.99, 1, 300000, 200, None, 50 * 2000, 2000),
    'siftflow-fcn8s': (1e-12, 0.99, 1, 300000, 200, None, 50 * 2000, 2000),
    'pascalcontext-fcn32s': (1e-10, 0.99, 1, 300000, 5105, 4000, 50 * 8000, 8000),
    'pascalcontext-fcn16s': (1e-12, 0.99, 1, 300000, 5105, 4000, 50 * 8000, 8000),
    'pascalcontext-fcn8s': (1e-14, 0.99, 1, 300000, 5105, 4000, 50 * 8000, 8000),
}
# What each script starts from: (source, snapshot iteration or None for its final weights).
STARTS_FROM = {
    'voc-fcn32s': [('weights/vgg16-fcn', None)],
    'voc-fcn16s': [('voc-fcn32s', None)],
    'voc-fcn8s': [('voc-fcn16s', None)],
    'voc-fcn8s-atonce': [('weights/vgg16-fcn', None)],
    'voc-fcn-alexnet': [('weights/alexnet-fcn', None)],
    'voc-fcn-googlenet': [('weights/googlenet-fcn', None)],
    'nyud-fcn32s-color': [('weights/vgg16-fcn', None)],
    'nyud-fcn32s-hha': [('weights/vgg16-fcn', None)],
    'nyud-fcn32s-color-d': [('weights/vgg16-fcn', None)],
    'nyud-fcn32s-color-hha': [('nyud-fcn32s-color', 28000), ('nyud-fcn32s-hha', 60000)],
    'siftflow-fcn32s': [('weights/vgg16-fcn', None)],
    'siftflow-fcn16s': [('siftflow-fcn32s', None)],
    'siftflow-fcn8s': [('siftflow-fcn16s', None)],
    'pascalcontext-fcn32s': [('weights/vgg16-fcn', None)],
    'pascalcontext-fcn16s': [('pascalcontext-fcn32s', None)],
    'pascalcontext-fcn8s': [('pascalcontext-fcn16s', None)],
}


def solver_file(name):
    param = caffe_pb2.SolverParameter()
    text_format.Merge((generate.MODELS_DIR / name / 'solver.prototxt').read_text(), param)
    return param


@pytest.mark.parametrize('name', sorted(REFERENCE))
def test_solver_files_are_the_references(name):
    base_lr, momentum, iter_size, max_iter, test_iter, snapshot, _, _ = REFERENCE[name]
    param = solver_file(name)
    for field, value in COMMON.items():
        assert getattr(param, field) == pytest.approx(value), field
    assert param.base_lr == pytest.approx(base_lr, rel=1e-6)
    assert (param.momentum, param.iter_size, param.max_iter) == \
        (pytest.approx(momentum), iter_size, max_iter)
    assert list(param.test_iter) == [test_iter]
    assert not param.HasField('type')  # SGD, Caffe's default, unwritten as in the release
    if snapshot is None:
        assert not param.HasField('snapshot') and not param.HasField('snapshot_prefix')
    else:
        assert (param.snapshot, param.snapshot_prefix) == (snapshot, 'snapshot/train')


@pytest.mark.parametrize('name', sorted(REFERENCE))
def test_the_plan_is_what_the_reference_script_ran(name):
    *_, snapshot, run_length, test_every = REFERENCE[name]
    planned = start.plan(name)
    assert planned['iterations'] == run_length
    assert planned['test_every'] == test_every
    # Snapshots at the solver's interval; where it names none (SIFT Flow), at each score.
    assert planned['snapshot_every'] == (snapshot or test_every)
    expected = []
    for source, iteration in STARTS_FROM[name]:
        if source.startswith('weights/'):
            path = paths.REPO / f'{source}.caffemodel'
        elif iteration is None:
            path = paths.RUNS_DIR / source / 'final.caffemodel'
        else:
            path = paths.RUNS_DIR / source / 'snapshots' / f'{source}_iter_{iteration}.caffemodel'
        expected.append((str(path), iteration))
    assert [(entry['weights'], entry['iteration']) for entry in planned['init']] == expected
    assert planned['solver']['base_lr'] == pytest.approx(REFERENCE[name][0], rel=1e-6)
    widened = [{'from': 'conv1_1', 'layer': 'conv1_1_bgrd'}] if name.endswith('-color-d') else []
    assert planned['widen_input'] == widened


def test_the_plan_command_prints_json_without_data(tmp_path):
    result = subprocess.run(
        [sys.executable, str(paths.REPO / 'solve' / 'solve.py'), 'voc-fcn8s-atonce', '--plan',
         '--data-dir', str(tmp_path / 'nothing-here')],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    planned = json.loads(result.stdout)
    assert (planned['iterations'], planned['test_every'], planned['snapshot_every']) == \
        (300000, 4000, 4000)
    assert planned['solver']['max_iter'] == 300000  # the file keeps the release's max_iter


def reference_multipliers(body, layer):
    """(lr_mult, decay_mult) per parameter blob as the release writes them: VGG16 and
    GoogLeNet layers 1/1 on weights and 2/0 on biases; FCN-AlexNet's body none (Caffe's
    1/1) but its score layer; upsampling and the at-once scales fixed (lr_mult 0)."""
    if layer.type == 'Deconvolution':
        return [(0, 1)]
    if layer.type == 'Scale':
        return [(0, 1)]
    if body == 'alexnet' and not layer.name.startswith('score'):
        return [(1, 1), (1, 1)]
    return [(1, 1), (2, 0)]


@pytest.mark.parametrize('name', SEGMENTATION)
def test_every_layer_learns_at_the_reference_rates(name):
    spec = MODELS[name]
    net = caffe_pb2.NetParameter()
    text_format.Merge((generate.MODELS_DIR / name / 'train.prototxt').read_text(), net)
    for layer in net.layer:
        if layer.type not in ('Convolution', 'Deconvolution', 'Scale', 'InnerProduct'):
            continue
        blobs = 1 if layer.type in ('Deconvolution', 'Scale') else 2
        written = [(p.lr_mult, p.decay_mult) for p in layer.param]
        written += [(1, 1)] * (blobs - len(written))  # Caffe's defaults
        assert written == reference_multipliers(spec.body, layer), layer.name
        if layer.type == 'Deconvolution':
            assert not layer.convolution_param.bias_term


# ---- stand-in weights ----------------------------------------------------------------------

def narrow(spec, width):
    """A model at a fraction of its width; the toy nets keep theirs."""
    return spec if spec.dataset == 'toy' or width == 1 else replace(spec, width=width)


def write_nets(folder, spec):
    """The spec's train and val nets with Input layers, its deploy net and a solver over
    them: the model as the project generates it, but fed by the test. One image per update
    (iter_size 1): a single pass shows where gradients flow."""
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in generate.render(replace(spec, iter_size=1)).items():
        variant = Path(path).stem
        if variant in ('train', 'val'):
            net = caffe_pb2.NetParameter()
            text_format.Merge(text, net)
            text = str(with_input_layer(net, spec, (64, 64)))
        (folder / Path(path).name).write_text(text)
    return folder / 'solver.prototxt'


# base weights name -> (classifier of BASE_NETS or MODELS, the FCN deploy net surgery targets)
BASE_WEIGHTS = {'vgg16-fcn': ('vgg16', 'voc-fcn32s'), 'alexnet-fcn': ('caffenet', 'voc-fcn-alexnet'),
                'googlenet-fcn': ('googlenet', 'voc-fcn-googlenet'),
                'toy-vgg16-fcn': ('toy-vgg16', 'toy-fcn32s')}


def base_weights(folder, name, width):
    """A random classifier of `width` carried into FCN base weights by the project's surgery."""
    classifier, fcn = BASE_WEIGHTS[name]
    classifier_spec = narrow({**BASE_NETS, **MODELS}[classifier], width)
    deploy = folder / classifier / 'deploy.prototxt'
    deploy.parent.mkdir(parents=True, exist_ok=True)
    deploy.write_text(generate.render(classifier_spec)[f'{classifier}/deploy.prototxt'])
    weights = random_net_file(deploy, folder / f'{classifier}.caffemodel', seed=7)
    write_nets(folder / fcn, narrow(MODELS[fcn], width))
    out = folder / f'{name}.caffemodel'
    surgery.to_fcn(str(deploy), str(weights), str(folder / fcn / 'deploy.prototxt'), str(out))
    return out


@pytest.fixture(scope='module')
def narrow_base(tmp_path_factory):
    """Base weights at NARROW width, made once, on demand."""
    folder = tmp_path_factory.mktemp('base')
    made = {}

    def get(name):
        if name not in made:
            made[name] = base_weights(folder, name, NARROW)
        return made[name]
    return get


def started(name, tmp_path, monkeypatch, base, width=NARROW, init_from='reference',
            weights=None):
    """Model `name` at `width` after the project's initialisation, from stand-in files
    where the table says it starts, or from the file `weights` (solve.py --weights):
    (spec, training, solver)."""
    spec = narrow(MODELS[name], width)
    runs, weights_dir = tmp_path / 'runs', tmp_path / 'weights'
    monkeypatch.setattr(paths, 'RUNS_DIR', runs)
    monkeypatch.setattr(paths, 'WEIGHTS_DIR', weights_dir)
    for source in start.init_files(MODELS[name], init_from=init_from):
        if source.weights.is_relative_to(weights_dir):
            source.weights.parent.mkdir(parents=True, exist_ok=True)
            source.weights.symlink_to(base(source.weights.stem))
        else:  # an earlier stage of the table, trained (here: random)
            model = source.weights.relative_to(runs).parts[0]
            write_nets(tmp_path / 'nets' / model, narrow(MODELS[model], width))
            random_net_file(tmp_path / 'nets' / model / 'deploy.prototxt', source.weights,
                            seed=len(model))
    solver_path = write_nets(tmp_path / 'nets' / name, spec)
    training = replace(start.training_run(name, run_dir=tmp_path / 'run', weights=weights,
                                          init_from=init_from), solver=solver_path)
    solver, original = trainer.build_solver(training)
    trainer.Trainer(solver, training, 0, original).start()
    return spec, training, solver


def file_layers(path):
    model = caffe_pb2.NetParameter()
    model.ParseFromString(Path(path).read_bytes())
    return {layer.name: [blobproto_to_array(blob) for blob in layer.blobs]
            for layer in model.layer if layer.blobs}


def feed(net, spec, size, rng):
    for top, shape in parts.input_shapes(spec, size, labels=True).items():
        net.blobs[top].reshape(*shape)
    for top in parts.input_shapes(spec, size):
        net.blobs[top].data[...] = rng.normal(0, 50, net.blobs[top].data.shape)
    for head in spec.heads:
        labels = rng.integers(0, head.num_classes, net.blobs[head.label].data.shape)
        labels[..., :3, :] = 255
        net.blobs[head.label].data[...] = labels
    net.reshape()


def learnable(net, name):
    """Whether layer `name` learns: the upsampling and the at-once scales are fixed."""
    layer = net.layers[list(net._layer_names).index(name)]
    return layer.type not in ('Deconvolution', 'Scale')


def check_initialisation(name, spec, training, solver, size):
    net = solver.net
    copied = set()
    for weights, modality in training.init:
        suffix = surgery.modality_suffix(net, modality) if modality else ''
        for layer, blobs in file_layers(weights).items():
            target = layer + suffix
            if target not in net.params or 'up' in layer:  # upsampling: refilled bilinear
                continue
            for blob, param in zip(blobs, net.params[target]):
                np.testing.assert_array_equal(param.data, blob.reshape(param.data.shape),
                                              err_msg=f'{target} is not {weights}:{layer}')
            copied.add(target)
    if spec.first_conv != 'conv1_1':
        # The reference's colour-depth script: conv1_1's weights on the BGR channels,
        # their mean over those channels on depth, conv1_1's bias.
        (source, _), = training.init
        conv1_1, bias = file_layers(source)['conv1_1']
        weights, filled_bias = (blob.data for blob in net.params[spec.first_conv])
        np.testing.assert_array_equal(weights[:, :3], conv1_1)
        np.testing.assert_allclose(weights[:, 3], conv1_1.mean(axis=1), rtol=1e-6)
        np.testing.assert_array_equal(filled_bias, bias)
        copied.add(spec.first_conv)
    # The reference leaves the new score layers at zero and fills everything else.
    for layer, blobs in net.params.items():
        at_zero = [not blob.data.any() for blob in blobs]
        if layer.startswith('score') and layer not in copied:
            assert all(at_zero), f'{layer} is new here: the reference starts it at zero'
        else:
            assert not any(at_zero), f'{name}: {layer} starts at zero'
    # One update, then every learnable blob has a gradient: none is cut off from the loss.
    rng = np.random.default_rng(3)
    feed(net, spec, size, rng)
    solver.step(1)
    for blobs in net.params.values():
        for blob in blobs:
            blob.diff[...] = 0
    net.forward()
    net.backward()
    dead = [f'{layer}[{index}]' for layer, blobs in net.params.items() if learnable(net, layer)
            for index, blob in enumerate(blobs) if not blob.diff.any()]
    assert not dead, f'{name}: no gradient reaches {", ".join(dead)}'


@pytest.mark.parametrize('name', SEGMENTATION)
def test_initialisation_is_the_references(name, tmp_path, monkeypatch, narrow_base):
    spec, training, solver = started(name, tmp_path, monkeypatch, narrow_base)
    check_initialisation(name, spec, training, solver, REAL_SIZE[spec.dataset])


@pytest.mark.parametrize('name', ['nyud-fcn32s-color-d', 'voc-fcn-alexnet',
                                  'voc-fcn-googlenet'])
def test_initialisation_at_full_width(name, tmp_path, monkeypatch):
    """One model per body with classifiers of the real shapes (VGG16 138 M, CaffeNet 61 M,
    GoogLeNet 7 M parameters), on a small input: the properties hold at full size."""
    base = tmp_path / 'base'
    spec, training, solver = started(name, tmp_path, monkeypatch,
                                lambda weights: base_weights(base, weights, 1), width=1)
    assert spec.width == 1
    check_initialisation(name, spec, training, solver, (48, 64))


# ---- the colour-depth net's first convolution ----------------------------------------------

COLOUR_DEPTH = 'nyud-fcn32s-color-d'
FILL = [{'from': 'conv1_1', 'layer': 'conv1_1_bgrd'}]


def first_conv(solver):
    return [blob.data.copy() for blob in solver.net.params['conv1_1_bgrd']]


def test_colour_depth_is_filled_from_the_base_weights_however_they_are_named(
        tmp_path, monkeypatch, narrow_base):
    """The reference's colour-depth script starts from the VGG16 base weights: conv1_1's
    weights on the BGR channels, their mean over those channels on depth, conv1_1's bias,
    whether the table names the base weights or solve.py --weights gives the same file."""
    base = narrow_base('vgg16-fcn')
    conv1_1, bias = file_layers(base)['conv1_1']
    filled = {}
    for way, weights in (('table', None), ('--weights', base)):
        _, training, solver = started(COLOUR_DEPTH, tmp_path / way.strip('-'), monkeypatch,
                                   narrow_base, weights=weights)
        assert training.widen_input == (('conv1_1', 'conv1_1_bgrd'),), way
        assert start.plan(COLOUR_DEPTH, weights)['widen_input'] == FILL, way
        filled[way] = weights_now, bias_now = first_conv(solver)
        np.testing.assert_array_equal(weights_now[:, :3], conv1_1, err_msg=way)
        np.testing.assert_allclose(weights_now[:, 3], conv1_1.mean(axis=1), rtol=1e-6,
                                   err_msg=way)
        assert weights_now[:, 3].any(), f'{way}: the depth channel starts at zero'
        np.testing.assert_array_equal(bias_now, bias, err_msg=way)
    for table, given in zip(filled['table'], filled['--weights']):
        np.testing.assert_array_equal(table, given)


def test_a_net_whose_first_convolution_is_conv1_1_is_never_filled(tmp_path, monkeypatch,
                                                                 narrow_base):
    base = narrow_base('vgg16-fcn')
    _, training, solver = started('nyud-fcn32s-color', tmp_path, monkeypatch, narrow_base,
                               weights=base)
    assert training.widen_input == ()
    assert start.plan('nyud-fcn32s-color', base)['widen_input'] == []
    conv1_1, _ = file_layers(base)['conv1_1']
    np.testing.assert_array_equal(solver.net.params['conv1_1'][0].data, conv1_1)


def test_weights_holding_the_colour_depth_convolution_are_kept(tmp_path, monkeypatch,
                                                               narrow_base):
    """A snapshot of the colour-depth net itself (--weights) holds conv1_1_bgrd: it is
    loaded as it is, never refilled from a conv1_1."""
    _, _, solver = started(COLOUR_DEPTH, tmp_path / 'first', monkeypatch, narrow_base)
    rng = np.random.default_rng(5)
    for blob in solver.net.params['conv1_1_bgrd']:
        blob.data[...] = rng.normal(0, 1, blob.data.shape)
    snapshot = tmp_path / 'snapshot.caffemodel'
    solver.net.save(str(snapshot))
    trained = [blob.data.copy() for blob in solver.net.params['conv1_1_bgrd']]
    _, training, again = started(COLOUR_DEPTH, tmp_path / 'again', monkeypatch, narrow_base,
                              weights=snapshot)
    assert training.widen_input == ()
    assert start.plan(COLOUR_DEPTH, snapshot)['widen_input'] == []
    for saved, loaded in zip(trained, first_conv(again)):
        np.testing.assert_array_equal(loaded, saved)


# ---- iteration 0 of a stage that starts from another --------------------------------------

def bilinear(factor):
    """The bilinear interpolation kernel of an upsampling by `factor` (size 2 x factor)."""
    size = 2 * factor
    center = factor - 0.5
    ramp = 1 - np.abs(np.arange(size) - center) / factor
    return np.outer(ramp, ramp)


def upsample(scores, factor):
    """Caffe's Deconvolution with one bilinear kernel per class and stride `factor`."""
    classes, height, width = scores.shape
    kernel = bilinear(factor)
    size = 2 * factor
    out = np.zeros((classes, (height - 1) * factor + size, (width - 1) * factor + size))
    for y in range(height):
        for x in range(width):
            out[:, y * factor:y * factor + size, x * factor:x * factor + size] += \
                scores[:, y, x, None, None] * kernel
    return out


def crop(scores, offset, size):
    return scores[:, offset:offset + size[0], offset:offset + size[1]]


def val_net(solver):
    net = solver.test_nets[0]
    net.share_with(solver.net)
    return net


def coarse_net(tmp_path, model, spec_width, size, weights):
    spec = narrow(MODELS[model], spec_width)
    net = caffe.Net(str(tmp_path / 'nets' / model / 'val.prototxt'), str(weights), caffe.TEST)
    feed(net, spec, size, np.random.default_rng(11))
    net.forward()
    return net


# The published crop offsets (FCN-16s: 5 then 27; FCN-8s: 5, 9, 31), and the coarse map a
# finer stage upsamples at iteration 0, its new skip adding zero.
CHAINS = [('voc-fcn32s', 'voc-fcn16s'), ('voc-fcn16s', 'voc-fcn8s'),
          ('siftflow-fcn32s', 'siftflow-fcn16s'), ('siftflow-fcn16s', 'siftflow-fcn8s'),
          ('pascalcontext-fcn32s', 'pascalcontext-fcn16s'),
          ('pascalcontext-fcn16s', 'pascalcontext-fcn8s'),
          ('toy-fcn32s', 'toy-fcn16s'), ('toy-fcn16s', 'toy-fcn8s')]


@pytest.mark.parametrize('coarse, fine', CHAINS)
def test_a_finer_stage_starts_as_the_coarser_net(coarse, fine, tmp_path, monkeypatch,
                                                 narrow_base):
    spec, training, solver = started(fine, tmp_path, monkeypatch, narrow_base)
    size = REAL_SIZE[spec.dataset]
    net = val_net(solver)
    feed(net, spec, size, np.random.default_rng(11))
    net.forward()
    (weights, _), = training.init
    before = coarse_net(tmp_path, coarse, spec.width, size, weights)
    outputs = {head.score for head in spec.heads} | {'loss', 'loss_geo'}
    shared = [blob for blob in before.blobs if blob in net.blobs and blob not in outputs]
    assert any(blob.startswith('score_fr') for blob in shared)
    for blob in shared:
        np.testing.assert_array_equal(net.blobs[blob].data, before.blobs[blob].data,
                                      err_msg=f'{fine} at iteration 0: {blob}')
    for head in spec.heads:
        suffix = head.score[len('score'):]
        new_skip = 'score_pool4' if spec.stride == 16 else 'score_pool3'
        assert not net.blobs[new_skip + suffix].data.any()
        if spec.stride == 16:
            expected = crop(upsample(upsample(before.blobs['score_fr' + suffix].data[0], 2), 16),
                            27, size)
        else:
            expected = crop(upsample(upsample(before.blobs['fuse_pool4' + suffix].data[0], 2), 8),
                            31, size)
        np.testing.assert_allclose(net.blobs[head.score].data[0], expected, rtol=1e-4,
                                   atol=1e-4 * np.abs(expected).max())


def test_late_fusion_starts_as_the_average_of_its_nets(tmp_path, monkeypatch, narrow_base):
    spec, training, solver = started('nyud-fcn32s-color-hha', tmp_path, monkeypatch, narrow_base)
    size = REAL_SIZE['nyud']
    net = val_net(solver)
    feed(net, spec, size, np.random.default_rng(11))
    net.forward()
    scores = []
    for (weights, modality), model in zip(training.init, ('nyud-fcn32s-color', 'nyud-fcn32s-hha')):
        assert weights.name == {'color': 'nyud-fcn32s-color_iter_28000.caffemodel',
                                'hha': 'nyud-fcn32s-hha_iter_60000.caffemodel'}[modality]
        single = caffe.Net(str(tmp_path / 'nets' / model / 'val.prototxt'), str(weights),
                           caffe.TEST)
        for top, source in (('data', modality), ('label', 'label')):  # one input: "data"
            single.blobs[top].reshape(*net.blobs[source].shape)
        single.reshape()
        single.blobs['data'].data[...] = net.blobs[modality].data
        single.blobs['label'].data[...] = net.blobs['label'].data
        single.forward()
        np.testing.assert_array_equal(net.blobs['fc7' + modality].data, single.blobs['fc7'].data)
        scores.append(single.blobs['score_fr'].data)
    fused = 0.5 * scores[0] + 0.5 * scores[1]
    np.testing.assert_allclose(net.blobs['score_fused'].data, fused, rtol=1e-6, atol=1e-6)
    expected = crop(upsample(fused[0], 32), 19, size)
    np.testing.assert_allclose(net.blobs['score'].data[0], expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


def test_at_once_skips_start_scaled_as_published(tmp_path, monkeypatch, narrow_base):
    """pool4 x 0.01 and pool3 x 0.0001 (fixed), zero skip scores: the output at iteration 0
    is score_fr upsampled x2, x2, x8 and cropped at 31."""
    spec, training, solver = started('voc-fcn8s-atonce', tmp_path, monkeypatch, narrow_base)
    size = REAL_SIZE['voc']
    net = val_net(solver)
    feed(net, spec, size, np.random.default_rng(11))
    net.forward()
    for pool, factor in (('pool4', 0.01), ('pool3', 0.0001)):
        assert np.all(net.params['scale_' + pool][0].data == np.float32(factor))
        np.testing.assert_array_equal(net.blobs['scale_' + pool].data,
                                      net.blobs[pool].data * np.float32(factor))
        assert not net.blobs['score_' + pool].data.any()
    coarse = upsample(upsample(net.blobs['score_fr'].data[0], 2), 2)
    expected = crop(upsample(coarse, 8), 31, size)
    np.testing.assert_allclose(net.blobs['score'].data[0], expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
