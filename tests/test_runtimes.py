"""Inference without Caffe: the ONNX export (fcn/onnx_export.py, solve/export.py) and the
OpenCV and ONNX Runtime runtimes (fcn/runtimes.py, infer.py --runtime) against Caffe.

Each deploy net family at 1/16 of its width, with random weights of its shapes, at two odd
input sizes: every output of both runtimes within 1e-4 of the score range of Caffe's, and
the same argmax at >= 99.99% of the pixels. infer.py runs both runtimes with `caffe` made
unimportable. `make check-runtimes` (checks/runtimes.py) does the same at full width.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import caffe

from checks import runtimes as runtime_check
from fcn import onnx_export, paths, runtimes
from fcn.errors import UsageError
from fcn.prototxt import read_net
from solve import export as export_command
from solve import infer as infer_command
from solve import score as score_command

caffe.set_mode_cpu()

# One net of each family: VGG16 at three strides and at once, AlexNet, GoogLeNet, NYUD's
# two-input and late-fusion nets, SIFT Flow's two heads, PASCAL-Context.
FAMILIES = ('voc-fcn32s', 'voc-fcn16s', 'voc-fcn8s', 'voc-fcn8s-atonce', 'voc-fcn-alexnet',
            'voc-fcn-googlenet', 'nyud-fcn32s-color-d', 'nyud-fcn32s-color-hha',
            'siftflow-fcn8s', 'pascalcontext-fcn8s')
SIZES = ((37, 53), (61, 45))


@pytest.mark.parametrize('model', FAMILIES)
def test_both_runtimes_agree_with_caffe(model, tmp_path):
    rows = runtime_check.compare(model, tmp_path, width=1 / 16, sizes=SIZES)
    assert {row.runtime for row in rows} == {'onnxruntime', 'opencv'}
    assert len(rows) == 2 * len(SIZES) * (2 if model.startswith('siftflow') else 1)
    for row in rows:
        assert row.relative <= 1e-4 and row.agreement >= 0.9999, row


def random_toy(tmp_path):
    """toy-fcn8s (the project's own file) with random weights saved as a caffemodel."""
    prototxt = paths.MODELS_DIR / 'toy-fcn8s' / 'deploy.prototxt'
    net = caffe.Net(str(prototxt), caffe.TEST)
    runtime_check.randomize(net, np.random.default_rng(3))
    weights = tmp_path / 'toy.caffemodel'
    net.save(str(weights))
    return net, weights


def images(folder):
    """Images of odd sizes in modes infer.py accepts: RGB, 16-bit grey, RGBA."""
    rng = np.random.default_rng(4)
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(folder / 'rgb.png')
    Image.fromarray(rng.integers(0, 65536, (61, 45), dtype=np.uint16)).save(folder / 'grey16.png')
    Image.fromarray(rng.integers(0, 256, (30, 41, 4), dtype=np.uint8), 'RGBA').save(
        folder / 'rgba.png')
    return folder


def without_caffe(tmp_path):
    """An environment whose `import caffe` fails, as in a virtualenv without Caffe."""
    fake = tmp_path / 'no-caffe' / 'caffe'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text('raise ImportError("no Caffe in this environment")\n')
    return {**os.environ, 'PYTHONPATH': os.pathsep.join([str(fake.parent), str(paths.REPO)])}


def test_infer_runs_both_runtimes_without_caffe_and_labels_as_caffe(tmp_path, capsys):
    net, weights = random_toy(tmp_path)
    onnx_file = tmp_path / 'toy.onnx'
    export_command.main(['toy-fcn8s', '--weights', str(weights), '--onnx', str(onnx_file)])
    assert 'opset 17' in capsys.readouterr().out
    folder = images(tmp_path / 'images')
    infer_command.main(['toy-fcn8s', '--weights', str(weights), str(folder),
                        '--out', str(tmp_path / 'caffe')])
    env = without_caffe(tmp_path)
    infer = [sys.executable, str(paths.REPO / 'solve' / 'infer.py'), 'toy-fcn8s', str(folder)]
    for runtime, given in (('opencv', ['--weights', str(weights)]),
                           ('onnxruntime', ['--onnx', str(onnx_file)])):
        done = subprocess.run(infer + ['--runtime', runtime, *given, '--probabilities',
                                       '--out', str(tmp_path / runtime)],
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        for name in ('rgb', 'grey16', 'rgba'):
            assert (tmp_path / runtime / f'{name}.png').read_bytes() == \
                (tmp_path / 'caffe' / f'{name}.png').read_bytes(), (runtime, name)
            assert (tmp_path / runtime / f'{name}_prob.npz').is_file()
    done = subprocess.run([sys.executable, '-c', 'import caffe'], env=env,
                          capture_output=True, text=True)
    assert 'no Caffe in this environment' in done.stderr


def test_export_refuses_a_layer_it_does_not_write(tmp_path):
    from caffe import layers as L
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=3)
    n.prob = L.Sigmoid(n.conv)
    net_param = n.to_proto()
    with pytest.raises(onnx_export.ExportError, match=r'layer prob \(Sigmoid\): this layer '
                                                      r'type is not written'):
        onnx_export.to_onnx(net_param, {'conv': [np.zeros((2, 3, 3, 3)), np.zeros(2)]})
    with pytest.raises(onnx_export.ExportError, match=r'layer conv \(Convolution\) needs 2 '
                                                      r'parameter blobs .* gives? it 0'):
        onnx_export.to_onnx(net_param, {})


def test_export_refuses_another_nets_weights(tmp_path, capsys):
    _, weights = random_toy(tmp_path)
    with pytest.raises(UsageError, match=r"toy.caffemodel: layer conv1_1 holds blobs of "
                                         r"shapes .* another net's weights"):
        export_command.main(['voc-fcn8s', '--weights', str(weights),
                             '--onnx', str(tmp_path / 'x.onnx')])
    assert not (tmp_path / 'x.onnx').exists()


def test_unreadable_model_files_are_named(tmp_path):
    broken = tmp_path / 'broken.onnx'
    broken.write_bytes(b'not an onnx model')
    with pytest.raises(UsageError, match=r'ONNX Runtime .* cannot load .*broken.onnx.* '
                                         r'solve/export.py'):
        runtimes.OnnxRuntime(broken)
    with pytest.raises(UsageError, match=r'missing.onnx does not exist'):
        runtimes.OnnxRuntime(tmp_path / 'missing.onnx')
    prototxt = paths.MODELS_DIR / 'toy-fcn8s' / 'deploy.prototxt'
    cut = tmp_path / 'cut.caffemodel'
    _, weights = random_toy(tmp_path)
    cut.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(UsageError, match=r'cut.caffemodel'):
        runtimes.OpenCVRuntime(prototxt, cut)


def test_opencv_names_a_layer_type_it_lacks(tmp_path):
    from caffe import layers as L
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.score = L.Python(n.data, module='layers.voc', layer='VOCSegDataLayer')
    prototxt = tmp_path / 'python.prototxt'
    prototxt.write_text(str(n.to_proto()))
    weights = tmp_path / 'none.caffemodel'
    caffe.Net(str(paths.MODELS_DIR / 'toy-fcn8s' / 'deploy.prototxt'), caffe.TEST).save(
        str(weights))
    with pytest.raises(UsageError, match=r"OpenCV .* cannot read .*python.prototxt.*"
                                         r"type \"Python\""):
        runtimes.OpenCVRuntime(prototxt, weights)


def test_the_deploy_inputs_are_read_without_caffe():
    for model, inputs in (('voc-fcn8s', {'data': 3}),
                          ('nyud-fcn32s-color-d', {'color': 3, 'depth': 1})):
        prototxt = paths.MODELS_DIR / model / 'deploy.prototxt'
        assert runtimes.prototxt_inputs(prototxt) == inputs
        net_param = read_net(prototxt)
        assert [layer.type for layer in net_param.layer][0] == 'Input'


def test_opencv_refuses_weights_that_do_not_fill_the_net(tmp_path):
    """OpenCV itself ends the process on such weights (a segmentation fault)."""
    fcn32s = caffe.Net(str(paths.MODELS_DIR / 'toy-fcn32s' / 'deploy.prototxt'), caffe.TEST)
    weights = tmp_path / 'fcn32s.caffemodel'
    fcn32s.save(str(weights))
    prototxt = paths.MODELS_DIR / 'toy-fcn8s' / 'deploy.prototxt'
    with pytest.raises(UsageError, match=r'fcn32s.caffemodel has no weights for 5 layers of '
                                         r'.*toy-fcn8s/deploy.prototxt \(upscore2, '
                                         r'score_pool4, .*another net'):
        runtimes.OpenCVRuntime(prototxt, weights)
    with pytest.raises(UsageError, match=r'layer conv1_1 holds blobs of shapes '
                                         r'\(8, 3, 3, 3\), \(8,\) where .* has '
                                         r'\(64, 3, 3, 3\), \(64,\)'):
        runtimes.check_weights(paths.MODELS_DIR / 'voc-fcn8s' / 'deploy.prototxt', weights)


def test_the_weights_fields_are_caffes():
    from fcn import caffemodel
    from fcn.prototxt import caffe_pb2
    for (message, name), number in caffemodel.WEIGHTS_FIELDS.items():
        assert getattr(caffe_pb2(), message).DESCRIPTOR.fields_by_name[name].number == number


def test_the_parameter_shapes_read_without_caffe_are_caffes():
    for model in ('voc-fcn8s-atonce', 'voc-fcn-googlenet', 'voc-fcn-alexnet',
                  'nyud-fcn32s-color-d', 'siftflow-fcn8s'):
        prototxt = paths.MODELS_DIR / model / 'deploy.prototxt'
        net = caffe.Net(str(prototxt), caffe.TEST)
        read = runtimes.parameter_shapes(prototxt)
        assert set(read) == set(net.params), model
        for name, blobs in net.params.items():
            assert read[name][0] == [blob.data.shape for blob in blobs], (model, name)
        filled = {name for name, (_, by_definition) in read.items() if by_definition}
        assert filled == ({'scale_pool3', 'scale_pool4'} if model.endswith('atonce') else set())


def test_score_gives_caffes_confusion_on_every_runtime(tmp_path, capsys):
    import json
    from data import toy
    toy.generate(tmp_path / 'data' / 'toy', seg_train=1, seg_val=4, cls_train=0, cls_val=0,
                 seg_size=64, min_radius=6.0, max_radius=28.0)
    _, weights = random_toy(tmp_path)
    onnx_file = tmp_path / 'toy.onnx'
    export_command.main(['toy-fcn8s', '--weights', str(weights), '--onnx', str(onnx_file)])
    common = ['toy-fcn8s', '--data-dir', str(tmp_path / 'data'), '--cpu']
    reports = {}
    for runtime, given in (('caffe', ['--weights', str(weights)]),
                           ('opencv', ['--weights', str(weights)]),
                           ('onnxruntime', ['--onnx', str(onnx_file)])):
        reports[runtime] = tmp_path / f'{runtime}.json'
        score_command.main(common + given + ['--runtime', runtime,
                                             '--json', str(reports[runtime])])
    documents = {runtime: json.loads(path.read_text()) for runtime, path in reports.items()}
    caffe_document = documents['caffe']
    assert caffe_document['n_images'] == 4 and 'runtime' not in caffe_document
    assert np.array(caffe_document['confusion']).sum() == 4 * 64 * 64
    for runtime in ('opencv', 'onnxruntime'):
        document = documents[runtime]
        assert document.pop('runtime') == runtime
        assert document.pop('weights') == str(onnx_file if runtime == 'onnxruntime'
                                               else weights)
        assert document == {key: value for key, value in caffe_document.items()
                            if key != 'weights'}


def test_no_blas_is_chosen_for_caffe_where_there_is_no_caffe(tmp_path, monkeypatch, capsys):
    """On an Intel CPU a light virtualenv neither looks for MKL nor warns about it."""
    import importlib.util
    from fcn.runtime import caffe_env
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('vendor_id\t: GenuineIntel\n')
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *rest: None if name == 'caffe' else find_spec(name, *rest))
    environ = {}
    assert caffe_env.choose_blas(environ, cpuinfo) == ('default', None)
    assert environ == {} and capsys.readouterr().err == ''


def test_export_says_where_it_cannot_write(tmp_path):
    from caffe import layers as L
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.score = L.ReLU(n.data)
    model = onnx_export.to_onnx(n.to_proto(), {})
    (tmp_path / 'taken.onnx').mkdir()
    with pytest.raises(UsageError, match=r'cannot write .*taken.onnx'):
        onnx_export.save(model, tmp_path / 'taken.onnx')


@pytest.mark.parametrize('command', [infer_command, score_command])
def test_caffes_options_are_refused_for_other_runtimes(command, tmp_path, capsys):
    images = [] if command is not infer_command else [str(tmp_path)]
    for arguments, said in (
            (['--runtime', 'onnxruntime', '--weights', 'w.caffemodel'], 'takes --onnx FILE'),
            (['--runtime', 'opencv'], 'needs --weights' if images else 'MODEL needs --weights'),
            (['--runtime', 'opencv', '--weights', 'w', '--onnx', 'x.onnx'],
             '--onnx is for --runtime onnxruntime'),
            (['--runtime', 'opencv', '--weights', 'w', '--gpu', '0'], '--gpu'),
            (['--runtime', 'opencv', '--weights', 'w', '--allow-missing-layers'],
             '--allow-missing-layers')):
        with pytest.raises(SystemExit) as stopped:
            command.main(['toy-fcn8s', *images, *arguments])
        assert stopped.value.code == 2
        assert said in capsys.readouterr().err


@pytest.mark.parametrize('kernel,stride,pad', [(3, 2, 1), (2, 2, 1), (3, 3, 1), (3, 2, 0)])
def test_pooling_rounds_as_caffe_does(kernel, stride, pad, tmp_path):
    """Caffe rounds the output size up and drops a last window that starts in the padding
    (9 rows, kernel 2, stride 2, pad 1: 5 rows, not 6)."""
    import onnxruntime
    from caffe import params as P
    from caffe import layers as L
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, 9, 9]))
    n.pool = L.Pooling(n.data, pool=P.Pooling.MAX, kernel_size=kernel, stride=stride, pad=pad)
    net_param = n.to_proto()
    (tmp_path / 'pool.prototxt').write_text(str(net_param))
    net = caffe.Net(str(tmp_path / 'pool.prototxt'), caffe.TEST)
    session = onnxruntime.InferenceSession(
        onnx_export.to_onnx(net_param, {}).SerializeToString(),
        providers=['CPUExecutionProvider'])
    rng = np.random.default_rng(5)
    for size in ((9, 9), (10, 11), (7, 8), (12, 13)):
        x = rng.normal(size=(1, 2, *size)).astype(np.float32)
        net.blobs['data'].reshape(*x.shape)
        net.blobs['data'].data[...] = x
        net.forward()
        np.testing.assert_array_equal(session.run(None, {'data': x})[0], net.blobs['pool'].data)


def test_a_tie_within_the_tolerance_is_no_disagreement():
    reference = np.zeros((1, 3, 1, 3), np.float32)
    reference[0, :, 0, 0] = (0, 1, 1 - 1e-6)   # classes 1 and 2 tie within the tolerance
    reference[0, :, 0, 1] = (0, 1, 0.5)        # class 1 first by far
    reference[0, :, 0, 2] = (0, 0.2, 0.1)
    scores = reference.copy()
    scores[0, 2, 0, 0] = 2                     # the runtime ranks class 2 first: a tie
    scores[0, 2, 0, 1] = 2                     # ... and here: a disagreement
    assert runtime_check.tied_argmax(scores, reference).tolist() == [[[True, False, True]]]
