"""Weights files and prototxts that Caffe would end the process on (a failed check, exit
134) are refused by every command in one line naming the file: a caffemodel cut short,
a file of another kind, another net's weights (the missing layers named, accepted with
--allow-missing-layers), a malformed prototxt (its file, line and column). The commands
run as processes of their own, so that an abort would show; the nets are the toy ones."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import caffe
from caffe import layers as L
from caffe.proto import caffe_pb2

from data import toy
from fcn import caffemodel, nets, prototxt
from fcn.errors import UsageError
from fcn.paths import REPO

caffe.set_mode_cpu()

TOY_SET = dict(seg_train=2, seg_val=2, cls_train=0, cls_val=0, seg_size=64,
               min_radius=6.0, max_radius=28.0)
COMMANDS = ('infer', 'score', 'surgery', 'solve')


def deploy(model):
    return REPO / 'models' / model / 'deploy.prototxt'


def random_weights(model, path):
    """A model's deploy net with Caffe's fillers, saved as training saves it."""
    caffe.Net(str(deploy(model)), caffe.TEST).save(str(path))
    return path


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """A toy dataset, weights of toy-fcn8s, toy-fcn32s and toy-vgg16, and broken files:
    the first half of toy-fcn8s's weights, and a PNG image named as weights."""
    folder = tmp_path_factory.mktemp('weights')
    toy.generate(folder / 'data' / 'toy', **TOY_SET)
    made = {model: random_weights(model, folder / f'{model}.caffemodel')
            for model in ('toy-fcn8s', 'toy-fcn32s', 'toy-vgg16')}
    whole = made['toy-fcn8s'].read_bytes()
    made['cut'] = folder / 'cut.caffemodel'
    made['cut'].write_bytes(whole[:len(whole) // 2])
    made['png'] = folder / 'picture.caffemodel'
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(made['png'], format='PNG')
    made['data'] = folder / 'data'
    made['image'] = sorted((folder / 'data' / 'toy' / 'JPEGImages').iterdir())[0]
    return made


def run(*arguments):
    env = {key: value for key, value in os.environ.items() if key != 'FCN_DATA_DIR'}
    return subprocess.run([sys.executable, *map(str, arguments)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def command(name, weights, files, out, *extra):
    """The command line of `name` that loads `weights` (into toy-fcn8s, or the classifier
    toy-vgg16 for surgery)."""
    if name == 'infer':
        return ('solve/infer.py', 'toy-fcn8s', '--weights', weights, files['image'],
                '--out', out, '--cpu', *extra)
    if name == 'score':
        return ('solve/score.py', 'toy-fcn8s', '--weights', weights, '--data-dir',
                files['data'], '--json', out / 'score.json', '--cpu', *extra)
    if name == 'surgery':
        return ('solve/surgery.py', 'to-fcn', '--classifier', deploy('toy-vgg16'), '--weights',
                weights, '--fcn', deploy('toy-fcn32s'), '--out', out / 'base.caffemodel')
    return ('solve/solve.py', 'toy-fcn8s', '--weights', weights, '--data-dir', files['data'],
            '--run-dir', out, '--steps', '1', '--cpu')


def assert_one_line_error(done):
    assert done.returncode == 2, done.stdout + done.stderr
    assert 'Traceback' not in done.stderr and 'Check failed' not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, done.stderr
    return errors[0]


@pytest.mark.parametrize('kind', ['cut', 'png'])
@pytest.mark.parametrize('name', COMMANDS)
def test_a_broken_weights_file_is_named_with_its_size(files, tmp_path, name, kind):
    weights = files[kind]
    error = assert_one_line_error(run(*command(name, weights, files, tmp_path)))
    assert f'{weights} ({weights.stat().st_size} bytes) is not a complete Caffe weights file' \
        in error
    assert 'download or copy it again' in error


def test_a_snapshot_whose_weights_are_cut_short_is_not_resumed(files, tmp_path):
    trained = run(*command('solve', files['toy-fcn8s'], files, tmp_path),
                  '--snapshot-every', '1', '--test-every', '0')
    assert trained.returncode == 0, trained.stderr
    state, = (tmp_path / 'snapshots').glob('*.solverstate')
    weights = state.with_suffix('.caffemodel')
    whole = weights.read_bytes()
    weights.write_bytes(whole[:len(whole) - 100])
    resumed = run('solve/solve.py', 'toy-fcn8s', '--resume', state, '--data-dir', files['data'],
                  '--run-dir', tmp_path, '--steps', '1', '--cpu')
    error = assert_one_line_error(resumed)
    assert f'{weights} ({len(whole) - 100} bytes) is not a complete Caffe weights file' in error


def layers_with_parameters(model):
    return set(caffe.Net(str(deploy(model)), caffe.TEST).params)


@pytest.mark.parametrize('name', ['infer', 'score'])
def test_another_models_weights_are_refused_unless_allowed(files, tmp_path, name):
    missing = layers_with_parameters('toy-fcn8s') - layers_with_parameters('toy-fcn32s')
    assert {'score_pool4', 'score_pool3'} <= missing
    refused = run(*command(name, files['toy-fcn32s'], files, tmp_path))
    error = assert_one_line_error(refused)
    net_file = REPO / 'models' / 'toy-fcn8s' / ('val.prototxt' if name == 'score'
                                                else 'deploy.prototxt')
    said = f'{files["toy-fcn32s"]} has no weights for {len(missing)} layers of {net_file} ('
    assert said in error
    named = error.split(said, 1)[1].split(')', 1)[0].split(', ')
    assert set(named) == missing
    assert '--allow-missing-layers' in error
    assert not any(tmp_path.iterdir())

    allowed = run(*command(name, files['toy-fcn32s'], files, tmp_path,
                           '--allow-missing-layers'))
    assert allowed.returncode == 0, allowed.stderr
    assert 'they keep what the prototxt fills them with' in allowed.stderr
    written = tmp_path / ('score.json' if name == 'score' else f'{files["image"].stem}.png')
    assert written.is_file()


def test_weights_of_other_shapes_are_refused_even_if_layers_may_be_missing(files, tmp_path):
    """The classifier's fc6 is fully connected, the FCN's a convolution of the same count:
    Caffe would stop the process on the shapes."""
    done = run(*command('infer', files['toy-vgg16'], files, tmp_path,
                        '--allow-missing-layers'))
    error = assert_one_line_error(done)
    classifier = caffe.Net(str(deploy('toy-vgg16')), caffe.TEST)
    assert f'layer fc6 holds blobs of shapes {classifier.params["fc6"][0].data.shape}' in error


def test_a_malformed_classifier_prototxt_is_named_by_file_and_line(files, tmp_path):
    lines = deploy('toy-vgg16').read_text().splitlines()
    bad_line = next(number for number, line in enumerate(lines, 1)
                    if line.strip() == 'kernel_size: 3')
    lines[bad_line - 1] = lines[bad_line - 1].replace('kernel_size: 3', 'kernel_size: three')
    classifier = tmp_path / 'classifier.prototxt'
    classifier.write_text('\n'.join(lines) + '\n')
    done = run('solve/surgery.py', 'to-fcn', '--classifier', classifier, '--weights',
               files['toy-vgg16'], '--fcn', deploy('toy-fcn32s'), '--out',
               tmp_path / 'base.caffemodel')
    error = assert_one_line_error(done)
    assert error.startswith(f'error: {classifier}:{bad_line}:')
    assert 'make models' in error
    assert not (tmp_path / 'base.caffemodel').exists()


@pytest.mark.parametrize('bad, column', [
    ('kernel_sise: 3', 5),      # no such field: the field's name
    ('stride: -2', 13),         # a negative unsigned number: the number
])
def test_read_net_gives_the_line_and_column_of_a_mistake(tmp_path, bad, column):
    text = ['name: "tiny"', 'layer {', '  name: "conv"', '  convolution_param {',
            f'    {bad}', '  }', '}']
    path = tmp_path / 'net.prototxt'
    path.write_text('\n'.join(text) + '\n')
    with pytest.raises(prototxt.NetFileError) as raised:
        prototxt.read_net(path)
    assert str(raised.value).startswith(f'{path}:5:{column}: ')
    assert isinstance(raised.value, UsageError)
    with pytest.raises(prototxt.NetFileError, match=r'net\.prototxt does not exist'):
        prototxt.read_net(tmp_path / 'missing' / 'net.prototxt')


# ---- the library: what a net's definition fills, what a file holds -----------------------

def skip_net(with_scale, upsampling_filler=None):
    """data -> conv -> (a fixed Scale filled by the definition) -> fixed Deconvolution."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, 6, 6]))
    n.conv = L.Convolution(n.data, num_output=3, kernel_size=1,
                           weight_filler=dict(type='gaussian', std=1))
    top = n.conv
    if with_scale:
        n.scale = L.Scale(top, param=[dict(lr_mult=0)],
                          scale_param=dict(filler=dict(type='constant', value=0.01)))
        top = n.scale
    convolution = dict(num_output=3, kernel_size=4, stride=2, bias_term=False)
    if upsampling_filler:
        convolution['weight_filler'] = dict(type=upsampling_filler)
    n.up = L.Deconvolution(top, param=[dict(lr_mult=0)], convolution_param=convolution)
    return n.to_proto()


def saved(tmp_path, net_param, name, keep=None):
    path = tmp_path / f'{name}.prototxt'
    path.write_text(str(net_param))
    net = caffe.Net(str(path), caffe.TEST)
    weights = tmp_path / f'{name}.caffemodel'
    net.save(str(weights))
    if keep is not None:
        caffemodel.write_layers(weights, weights.with_suffix('.kept'), keep=keep)
        weights = weights.with_suffix('.kept')
    return path, net, weights


def test_layers_the_definition_fills_need_no_weights(tmp_path):
    """An at-once net's skip scales are fixed constants of the prototxt: weights without
    them load, and the scales keep their constant; a fixed upsampling without a filler
    (surgery fills it when training starts) is refused."""
    path, source, weights = saved(tmp_path, skip_net(True, 'bilinear'), 'source',
                                  keep={'conv', 'up'})
    net = nets.load_net(path, weights)
    np.testing.assert_array_equal(net.params['scale'][0].data, np.float32(0.01))
    np.testing.assert_array_equal(net.params['conv'][0].data, source.params['conv'][0].data)

    bare, _, _ = saved(tmp_path, skip_net(True), 'bare')
    _, _, without_up = saved(tmp_path, skip_net(True), 'no-up', keep={'conv'})
    with pytest.raises(caffemodel.WeightsFileError, match=r'has no weights for 1 layers of '
                       r'.*bare\.prototxt \(up\)'):
        nets.load_net(bare, without_up)
    net = nets.load_net(bare, without_up, allow_missing_layers=True)
    assert not net.params['up'][0].data.any()


def test_a_blob_whose_values_do_not_fill_its_shape_is_refused(tmp_path):
    _, _, weights = saved(tmp_path, skip_net(False), 'short')
    message = caffe_pb2.NetParameter.FromString(weights.read_bytes())
    conv = next(layer for layer in message.layer if layer.name == 'conv')
    del conv.blobs[0].data[-1]
    weights.write_bytes(message.SerializeToString())
    with pytest.raises(caffemodel.WeightsFileError, match=r'layer conv blob 0 has shape '
                       r'\(3, 2, 1, 1\) \(6 elements\) but holds 5 values'):
        caffemodel.checked_layers(weights)
    assert [record.name for record in caffemodel.read_layers(weights)][:2] == ['data', 'conv']


def test_a_missing_or_empty_weights_file_is_named(tmp_path):
    with pytest.raises(caffemodel.WeightsFileError, match='nothing.caffemodel does not exist'):
        caffemodel.checked_layers(tmp_path / 'nothing.caffemodel')
    (tmp_path / 'empty.caffemodel').write_bytes(b'')
    with pytest.raises(caffemodel.WeightsFileError,
                       match=r'empty.caffemodel \(0 bytes\) holds no layer with weights'):
        caffemodel.checked_layers(tmp_path / 'empty.caffemodel')
