"""The benchmark's own parts: FLOP counts, net rewriting, the PyTorch re-implementation,
the comparison rule, the results table and the data-layer fixture (bench/).

Tests that need PyTorch skip when it is absent: `make bench` installs it, `make test` not.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import caffe
from caffe import layers as L, params as P
from fcn import paths, prototxt
from fcn.runtime import caffe_env
from bench import __main__ as bench_main, contention, dataload, nets, report
from bench.__main__ import relative_difference
from bench.flops import net_flops

pb = prototxt.caffe_pb2()


def tiny_fcn(train, classes=3, depth=0):
    """A small net with every layer type the FCN nets use, in their configuration.

    `depth` more 3x3 convolutions (with ReLUs) after pool1 shrink the random scores as the
    VGG body does, below where Caffe's softmax loss clamps probabilities.
    """
    n = caffe.NetSpec()
    learn = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]
    if train:
        n.data, n.label = L.Python(module='layers.voc', layer='VOCSegDataLayer', ntop=2,
                                   param_str='{}')
    else:
        n.data = L.Input(shape=dict(dim=[1, 3, 20, 24]))
    n.conv1 = L.Convolution(n.data, num_output=4, kernel_size=3, pad=5, param=learn)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    body = n.pool1
    for index in range(depth):
        conv = L.Convolution(body, num_output=4, kernel_size=3, pad=1, param=learn)
        setattr(n, f'deep{index}', conv)
        body = L.ReLU(conv, in_place=True)
        setattr(n, f'deep{index}_relu', body)
    n.conv2 = L.Convolution(body, num_output=6, kernel_size=3, pad=1, group=2, param=learn)
    n.relu2 = L.ReLU(n.conv2, in_place=True)
    n.drop2 = L.Dropout(n.relu2, dropout_ratio=0.5, in_place=True)
    n.score_fr = L.Convolution(n.drop2, num_output=classes, kernel_size=1, param=learn)
    n.up = L.Deconvolution(n.score_fr, param=[dict(lr_mult=0)], convolution_param=dict(
        num_output=classes, kernel_size=4, stride=2, bias_term=False))
    n.score_pool1 = L.Convolution(body, num_output=classes, kernel_size=1, param=learn)
    n.upc = L.Crop(n.up, n.score_pool1, crop_param=dict(axis=2, offset=1))
    n.fuse = L.Eltwise(n.upc, n.score_pool1, operation=P.Eltwise.SUM)
    n.up2 = L.Deconvolution(n.fuse, param=[dict(lr_mult=0)], convolution_param=dict(
        num_output=classes, kernel_size=4, stride=2, bias_term=False))
    n.score = L.Crop(n.up2, n.data, crop_param=dict(axis=2, offset=3))
    if train:
        n.loss = L.SoftmaxWithLoss(n.score, n.label,
                                   loss_param=dict(normalize=False, ignore_label=255))
    return n.to_proto()


def write_tiny_model(folder, depth):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'deploy.prototxt').write_text(str(tiny_fcn(False, depth=depth)))
    (folder / 'train.prototxt').write_text(str(tiny_fcn(True, depth=depth)))
    (folder / 'solver.prototxt').write_text(
        'train_net: "train.prototxt"\ntest_net: "val.prototxt"\ntest_iter: 10\n'
        'test_interval: 999999\nbase_lr: 1e-3\nlr_policy: "fixed"\nmomentum: 0.9\n'
        'weight_decay: 0.0005\nsnapshot: 4000\nsnapshot_prefix: "snapshot/train"\n')
    return folder


def test_conv_geometry_reads_caffe_defaults_and_per_axis_fields():
    conv = pb.ConvolutionParameter(kernel_size=[3], pad=[100])
    assert nets.conv_geometry(conv) == ((3, 3), (1, 1), (100, 100), (1, 1), 1)
    conv = pb.ConvolutionParameter(kernel_h=2, kernel_w=5, stride=[2, 3], dilation=[2],
                                   group=4)
    assert nets.conv_geometry(conv) == ((2, 5), (2, 3), (0, 0), (2, 2), 4)


def test_flops_count_macs_and_caffe_backward_pruning():
    net = tiny_fcn(True)
    shapes = {'data': (1, 3, 20, 24), 'conv1': (1, 4, 28, 32), 'pool1': (1, 4, 14, 16),
              'conv2': (1, 6, 14, 16), 'score_fr': (1, 3, 14, 16), 'up': (1, 3, 30, 34),
              'score_pool1': (1, 3, 14, 16), 'upc': (1, 3, 14, 16), 'fuse': (1, 3, 14, 16),
              'up2': (1, 3, 30, 34)}
    rows = {name: (forward, backward) for name, forward, backward
            in net_flops(net, shapes, pb.TRAIN)}
    assert rows['conv1'][0] == 2 * 4 * 28 * 32 * 3 * 9
    assert rows['conv2'][0] == 2 * 6 * 14 * 16 * (4 // 2) * 9
    # A deconvolution reduces over its output channels for each input value.
    assert rows['up'][0] == 2 * 3 * 14 * 16 * 3 * 16
    # conv1 reads the data: a weight gradient but no input gradient; the fixed deconvolution:
    # an input gradient only; the others both.
    assert rows['conv1'][1] == rows['conv1'][0]
    assert rows['up'][1] == rows['up'][0]
    assert rows['conv2'][1] == 2 * rows['conv2'][0]
    assert set(rows) == {'conv1', 'conv2', 'score_fr', 'up', 'score_pool1', 'up2'}


def test_input_fed_replaces_the_data_layer_and_solver_for_drops_tests(tmp_path):
    fed = nets.input_fed(tiny_fcn(True), {'data': (1, 3, 20, 24), 'label': (1, 1, 20, 24)})
    first = fed.layer[0]
    assert first.type == 'Input' and list(first.top) == ['data', 'label']
    assert [list(shape.dim) for shape in first.input_param.shape] == [[1, 3, 20, 24],
                                                                      [1, 1, 20, 24]]
    assert not any(layer.type == 'Python' for layer in fed.layer)
    with pytest.raises(ValueError, match='label'):
        nets.input_fed(tiny_fcn(True), {'data': (1, 3, 20, 24)})
    folder = write_tiny_model(tmp_path / 'tiny', depth=0)
    solver = nets.solver_for(prototxt.read_solver(folder / 'solver.prototxt'), tmp_path / 't.pt')
    assert solver.train_net == str(tmp_path / 't.pt')
    assert not solver.test_net and not solver.test_iter and not solver.snapshot
    assert solver.momentum == pytest.approx(0.9)


def test_random_weights_are_seeded_and_scaled_by_fan_in():
    shapes = {'conv/0': (64, 32, 3, 3), 'conv/1': (64,)}
    first, again = nets.random_weights(shapes, 7), nets.random_weights(shapes, 7)
    assert all(np.array_equal(first[key], again[key]) for key in shapes)
    assert first['conv/0'].dtype == np.float32
    assert first['conv/0'].std() == pytest.approx(1 / np.sqrt(32 * 9), rel=0.05)
    assert (first['conv/1'] < 0).all()


def test_relative_difference_uses_max_for_outputs_and_norm_for_gradients():
    a = np.ones(10000, np.float32)
    b = a.copy()
    b[0] += 0.01
    assert relative_difference('score', a, b) == pytest.approx(0.01, rel=1e-3)
    assert relative_difference('grad:conv1/0', a, b) == pytest.approx(1e-4, rel=1e-3)


def test_summaries_pair_rounds_and_the_table_and_json_show_them(tmp_path):
    # Round 2 ran under load: paired with its own SGEMM round, it still counts as 50%.
    summary = report.summarize([2.0, 4.0, 2.0], flops=4e9, sgemm=([1.0, 2.0, 1.0], 4e9))
    assert summary['median_s'] == 2.0 and summary['gflops'] == 2.0
    assert summary['of_sgemm'] == 0.5
    assert report.ratio([2.0, 4.0, 2.0], [1.0, 2.0, 4.0]) == 2.0
    part = {'caffe': dict(summary, peak_mb=300),
            'torch': dict(report.summarize([1.0, 2.0, 4.0], 4e9), peak_mb=200),
            'sgemm': report.summarize([1.0, 2.0, 1.0], 4e9), 'ratio': 2.0}
    results = {'model': 'tiny', 'width': 24, 'height': 20, 'rounds': 3,
               'load': {'start': (0.5, 0, 0), 'end': (0.7, 0, 0)}, 'machine': {'cores': 2},
               'forward': part, 'sgemm': {'size': 4096},
               'data': {'images_per_s': 50.0, 'median_s': 0.02, 'of_train_iteration': 0.01},
               'checks': {'forward': {'score': 1e-6}},
               'tolerance': {'outputs': 1e-4, 'gradients': 1e-2}}
    text = report.table(results)
    assert 'forward s' in text and '2.000' in text and '50%' in text and '1.50' in text
    assert '(limit 4.0)' in text
    assert '50.0 images/s' in text and 'within 1.0e-06' in text
    layers = report.layer_table([{'layer': 'conv1', 'seconds': 0.5, 'flops': 25e9},
                                 {'layer': 'pool1', 'seconds': 0.5, 'flops': 0}], 100.0)
    assert [line.split()[-1] for line in layers.splitlines()[2:]] == ['50%', '-']
    out = tmp_path / 'runs' / 'results.json'
    report.write_json(out, results)
    assert json.loads(out.read_text())['forward']['ratio'] == 2.0
    assert [p.name for p in out.parent.iterdir()] == ['results.json']


def test_voc_fixture_has_voc_layout_sizes_and_labels(tmp_path):
    names = dataload.write_voc_fixture(tmp_path, 2, 50, 40, seed=1)
    assert (tmp_path / 'ImageSets/Segmentation/bench.txt').read_text().split() == names
    image = Image.open(tmp_path / 'JPEGImages' / f'{names[0]}.jpg')
    assert image.format == 'JPEG' and image.size == (50, 40) and image.mode == 'RGB'
    label = Image.open(tmp_path / 'SegmentationClass' / f'{names[0]}.png')
    assert label.mode == 'P' and label.size == (50, 40)
    values = set(np.unique(np.asarray(label)))
    assert 255 in values and values <= set(range(21)) | {255}


def test_torch_reimplementation_matches_caffe(tmp_path):
    torch = pytest.importorskip('torch', reason='PyTorch is benchmark-only: `make bench` '
                                                 'installs it')
    from bench.torchnet import CaffeNet
    definition = nets.input_fed(tiny_fcn(True), {'data': (1, 3, 20, 24),
                                                 'label': (1, 1, 20, 24)})
    path = tmp_path / 'train.prototxt'
    prototxt.write_text_proto(path, definition)
    net = caffe.Net(str(path), caffe.TEST)
    weights = nets.random_weights({f'{name}/{i}': blob.data.shape for name, blobs
                                   in net.params.items() for i, blob in enumerate(blobs)}, 3)
    for name, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            blob.data[...] = weights[f'{name}/{i}']
    # Few layers keep the scores as large as the input: scaled down, no probability falls
    # below the FLT_MIN that Caffe's loss clamps to, and both losses are the same sum.
    inputs = {'data': 0.05 * nets.random_image(24, 20, seed=5),
              'label': nets.random_label(24, 20, 3, seed=5)}
    for name, array in inputs.items():
        net.blobs[name].data[...] = array
    net.forward()
    net.backward()
    module = CaffeNet(definition, weights, pb.TEST)
    blobs = module({name: torch.from_numpy(array) for name, array in inputs.items()})
    module.losses(blobs).backward()
    np.testing.assert_allclose(blobs['score'].detach().numpy(), net.blobs['score'].data,
                               rtol=1e-4, atol=1e-4 * np.abs(net.blobs['score'].data).max())
    assert blobs['loss'].item() == pytest.approx(float(net.blobs['loss'].data), rel=1e-5)
    for key in ('conv1/0', 'conv2/1', 'score_pool1/0'):
        name, index = key.split('/')
        assert relative_difference('grad:' + key, net.params[name][int(index)].diff,
                                   module.params[key].grad.numpy()) < 1e-4
    assert not module.params['up/0'].requires_grad
    groups = module.param_groups(pb.SolverParameter(base_lr=0.1, weight_decay=0.5))
    settings = sorted({(round(g['lr'], 6), round(g['weight_decay'], 6)) for g in groups})
    assert settings == [(0.1, 0.5), (0.2, 0.0)]


def test_end_to_end_on_a_tiny_net(tmp_path):
    pytest.importorskip('torch', reason='PyTorch is benchmark-only: `make bench` installs it')
    folder = write_tiny_model(tmp_path / 'tiny', depth=12)
    out = tmp_path / 'results.json'
    env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1')
    # The same OpenBLAS once more, through --blas-dir: the path another BLAS would take.
    caffe_blas = next(path for path in worker_libraries('caffe') if 'openblas' in path)
    (tmp_path / 'blas').mkdir()
    (tmp_path / 'blas' / 'libopenblas.so.0').symlink_to(caffe_blas)
    done = subprocess.run(
        [sys.executable, '-m', 'bench', '--model-dir', str(folder), '--size', '24x20',
         '--rounds', '1', '--parts', 'forward', 'train', '--threads', '1', '--sgemm-size', '256',
         '--blas-dir', f'again={tmp_path / "blas"}', '--layers', '--torch-forms', 'channels_last',
         'layers', '--out', str(out)],
        capture_output=True, text=True, env=env, cwd=paths.REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    # Both forms checked against Caffe and timed; the faster is the baseline.
    forms = results['forward']['torch_forms']
    assert list(forms) == ['channels_last', 'layers']
    assert max(results['checks']['forward@layers'].values()) <= 1e-4
    baseline = min(forms, key=lambda form: forms[form]['median_s'])
    assert results['forward']['torch']['form'] == baseline
    assert results['forward']['torch']['samples_s'] == forms[baseline]['samples_s']
    assert 'PyTorch by form' in done.stdout and '<- baseline' in done.stdout
    # --threads reaches PyTorch; Caffe's thread settings do not.
    process = results['forward']['torch']['process']
    assert process['torch']['threads'] == 1 and process['env']['FCN_ADAPT_THREADS'] == '0'
    for part in ('forward', 'train'):
        for framework in ('caffe', 'torch'):
            assert results[part][framework]['peak_mb'] > results[part][framework]['baseline_mb']
            assert results[part][framework]['median_s'] > 0
        assert results[part]['ratio'] > 0
    assert results['train']['caffe']['gflop'] > results['forward']['caffe']['gflop']
    assert max(results['checks']['forward'].values()) <= 1e-4
    assert 'forward+backward s' in done.stdout
    for part in ('forward', 'train'):
        again = results['blas']['again'][part]
        assert again['median_s'] > 0 and again['ratio_to_default'] > 0
        assert again['ratio_to_torch'] > 0
    assert max(results['checks']['caffe@again'].values()) <= 1e-4
    assert 'BLAS under the same Caffe' in done.stdout
    # Per layer: every (de)convolution that learns has a backward with FLOPs, and the
    # training net's FLOPs by layer add up to what the training part counted.
    train_rows = results['train_layers']['rows']
    assert all(row['forward_s'] > 0 for row in train_rows if row['forward_flops'])
    assert any(row['backward_flops'] and row['backward_s'] > 0 for row in train_rows)
    layer_flops = sum(row['forward_flops'] + row['backward_flops'] for row in train_rows)
    assert layer_flops / 1e9 == pytest.approx(results['train']['caffe']['gflop'], rel=1e-3)
    assert 'Caffe training by layer' in done.stdout and 'Caffe forward by layer' in done.stdout


def worker_libraries(kind):
    """The BLAS/OpenMP libraries a framework maps, as the benchmark's worker reports them."""
    script = (f'import {kind}, json\nfrom bench.worker import loaded_libraries\n'
              'print(json.dumps(loaded_libraries()))')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          cwd=paths.REPO, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def cpu_seconds(pid):
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def test_busy_process_works_while_the_block_runs_and_stops_after():
    with contention.busy_process() as process:
        started, deadline = cpu_seconds(process.pid), time.monotonic() + 30
        while cpu_seconds(process.pid) - started < 0.2 and time.monotonic() < deadline:
            time.sleep(0.05)  # a loaded machine gives it a smaller share, but a share
        assert cpu_seconds(process.pid) - started >= 0.2
    assert process.poll() is not None


def test_busy_process_ends_when_the_benchmark_is_killed():
    """A benchmark killed midway (no `finally`) leaves no busy process behind."""
    script = ('import os, sys\nfrom bench import contention\n'
              'with contention.busy_process() as p:\n'
              '    print(p.pid, flush=True)\n    os._exit(0)\n')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          cwd=paths.REPO, timeout=60)
    busy = int(done.stdout)
    deadline = time.monotonic() + 20
    while Path(f'/proc/{busy}').exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f'/proc/{busy}').exists()


def test_contention_figures_are_medians_of_each_rounds_ratio():
    samples = {'defaults': {'alone': [1.0, 2.0, 1.0], 'busy': [5.0, 8.0, 7.0],
                            'alone_fewer': [0, 0, 0], 'busy_fewer': [0, 0, 0]},
               'project': {'alone': [1.02, 2.2, 1.0], 'busy': [2.0, 3.0, 1.5],
                           'alone_fewer': [0, 2, 0], 'busy_fewer': [9, 10, 8]}}
    figures = contention.summarize(samples, 'defaults')
    assert figures['project']['fewer_threads_alone'] == 2
    assert figures['project']['fewer_threads_busy'] == 27
    assert figures['defaults']['slowdown'] == 5.0  # of 5, 4, 7
    assert figures['project']['slowdown'] == 1.5   # of 1.96, 1.36, 1.5
    assert figures['project']['alone_vs_reference'] == 1.02
    assert figures['project']['busy_vs_reference'] == pytest.approx(0.375)  # 0.4, 0.375, 0.21
    assert 'alone_vs_reference' not in figures['defaults']


def test_thread_envs_give_the_defaults_subject_no_wait_settings_and_no_fitting():
    env = {'PATH': '/bin', 'OMP_WAIT_POLICY': 'ACTIVE', 'GOMP_SPINCOUNT': '5',
           'FCN_ADAPT_THREADS': '1'}
    envs, settings = bench_main.thread_envs(env, {})
    assert settings == {'FCN_ADAPT_THREADS': '1'}
    assert envs['defaults'] == {'PATH': '/bin', 'FCN_ADAPT_THREADS': '0'}
    assert envs['project'] == {'PATH': '/bin', 'FCN_ADAPT_THREADS': '1'}
    # Another setting in place of the project's: the fitting stays off unless asked for.
    envs, settings = bench_main.thread_envs(env, {'GOMP_SPINCOUNT': '1000'})
    assert envs['project'] == {'PATH': '/bin', 'FCN_ADAPT_THREADS': '0',
                               'GOMP_SPINCOUNT': '1000'}


def test_the_makefile_exports_the_same_caffe_environment_as_the_tools():
    makefile = (paths.REPO / 'Makefile').read_text()
    for name, value in caffe_env.CAFFE_ENV.items():
        assert f'export {name} ?= {value}\n' in makefile


def test_contention_part_on_a_tiny_net(tmp_path):
    folder = write_tiny_model(tmp_path / 'tiny', depth=2)
    out = tmp_path / 'results.json'
    done = subprocess.run(
        [sys.executable, '-m', 'bench', '--parts', 'contention', '--rounds', '1',
         '--contention-model-dir', str(folder), '--contention-size', '24x20',
         '--contention-iterations', '2', '--thread-env', 'GOMP_SPINCOUNT=7', '--out', str(out)],
        capture_output=True, text=True, cwd=paths.REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())['contention']
    assert results['settings'] == {'GOMP_SPINCOUNT': '7'}
    for subject in ('defaults', 'project'):
        figures = results['figures'][subject]
        assert figures['alone_s'] > 0 and figures['busy_s'] > 0
        assert figures['slowdown'] > 0
    assert 'GOMP_SPINCOUNT=7' in done.stdout and 'busy/alone' in done.stdout


def test_contention_part_fits_the_project_subjects_threads_beside_the_busy_process(tmp_path):
    """The project's subject steps as the trainer does: beside the busy process it drops to
    the free core, the defaults' subject never does; alone neither runs on fewer threads
    than the machine's cores (unless something else here kept a core busy)."""
    folder = write_tiny_model(tmp_path / 'tiny', depth=2)
    out = tmp_path / 'results.json'
    done = subprocess.run(
        [sys.executable, '-m', 'bench', '--parts', 'contention', '--rounds', '1',
         '--contention-model-dir', str(folder), '--contention-size', '64x64',
         '--contention-iterations', '600', '--out', str(out)],
        capture_output=True, text=True, cwd=paths.REPO, timeout=300,
        env={**os.environ, 'OMP_NUM_THREADS': '2'})
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())['contention']
    assert results['settings'] == {'FCN_ADAPT_THREADS': '1'}
    figures = results['figures']
    assert figures['defaults']['fewer_threads_alone'] == 0
    assert figures['defaults']['fewer_threads_busy'] == 0
    assert figures['project']['fewer_threads_busy'] > 0
    assert 'iterations on fewer threads (project)' in done.stdout


# ---- PyTorch's forward forms (bench/torchnet.py FORMS) --------------------------------

def torch_or_skip():
    return pytest.importorskip('torch', reason='PyTorch is benchmark-only: `make bench` '
                                               'installs it')


def caffe_net_and_weights(definition, tmp_path, seed):
    """A Caffe TEST net of `definition` holding seeded random weights, and those weights."""
    path = tmp_path / 'net.prototxt'
    prototxt.write_text_proto(path, definition)
    net = caffe.Net(str(path), caffe.TEST)
    weights = nets.random_weights({f'{name}/{i}': blob.data.shape for name, blobs
                                   in net.params.items() for i, blob in enumerate(blobs)}, seed)
    for name, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            blob.data[...] = weights[f'{name}/{i}']
    return net, weights


def aliasing_net():
    """A net where overwriting a ReLU's bottom would be wrong twice: one ReLU works on the
    net's input, one on a crop (a view in PyTorch) of a blob that a later crop reads again;
    and one where it is right, on a convolution's own top."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 12, 14]))
    n.relu0 = L.ReLU(n.data, in_place=True)
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, pad=2)
    n.crop = L.Crop(n.conv, n.data, crop_param=dict(axis=2, offset=1))
    n.relu = L.ReLU(n.crop, in_place=True)
    n.crop2 = L.Crop(n.conv, n.data, crop_param=dict(axis=2, offset=2))
    n.sum = L.Eltwise(n.crop, n.crop2, operation=P.Eltwise.SUM)
    n.conv2 = L.Convolution(n.sum, num_output=3, kernel_size=1)
    n.relu2 = L.ReLU(n.conv2, in_place=True)
    return n.to_proto()


def test_plain_form_overwrites_only_what_no_one_else_reads(tmp_path):
    torch = torch_or_skip()
    from bench.torchnet import CaffeNet
    definition = aliasing_net()
    net, weights = caffe_net_and_weights(definition, tmp_path, seed=4)
    image = nets.random_image(14, 12, seed=6)
    net.blobs['data'].data[...] = image
    net.forward()
    module = CaffeNet(definition, weights, pb.TEST)
    plan = dict(zip((step.name for step in module.steps), module.plan(['conv2'])))
    assert {name: plan[name][0] for name in ('relu0', 'relu', 'relu2')} == {
        'relu0': False, 'relu': False, 'relu2': True}
    # Each blob goes after the last step that reads it: conv after crop2, the crops after
    # the sum, the input after the last crop that takes its shape.
    assert plan['crop2'][1] == ('conv', 'data') and plan['sum'][1] == ('crop', 'crop2')
    given = torch.from_numpy(image.copy())
    with torch.inference_mode():
        plain = module.infer({'data': given}, ['conv2'])['conv2']
        layers = module({'data': given})['conv2']
    assert torch.equal(given, torch.from_numpy(image))
    assert torch.equal(plain, layers)
    np.testing.assert_allclose(plain.numpy(), net.blobs['conv2'].data, rtol=1e-5,
                               atol=1e-5 * np.abs(net.blobs['conv2'].data).max())


def test_eager_forms_match_caffe_and_the_layers_form(tmp_path):
    torch = torch_or_skip()
    from bench.torchnet import FORMS, CaffeNet, Inference
    assert set(FORMS) == set(bench_main.TORCH_FORMS)
    definition = tiny_fcn(False, depth=2)
    net, weights = caffe_net_and_weights(definition, tmp_path, seed=3)
    image = nets.random_image(24, 20, seed=5)
    net.blobs['data'].data[...] = image
    net.forward()
    expected = net.blobs['score'].data
    outputs = {}
    for form in ('layers', 'plain', 'channels_last'):
        run = Inference(CaffeNet(definition, weights, pb.TEST), form, ['score'])
        given = torch.from_numpy(image.copy())
        with torch.inference_mode():
            outputs[form] = run({'data': given})['score'].numpy()
        assert torch.equal(given, torch.from_numpy(image)), form
        assert relative_difference('score', expected, outputs[form]) < 1e-5, form
    # The same kernels on the same layout: the same bits.
    assert np.array_equal(outputs['plain'], outputs['layers'])
    # The layers form is what training runs: every blob kept, as before.
    module = CaffeNet(definition, weights, pb.TEST)
    with torch.inference_mode():
        kept = module({'data': torch.from_numpy(image)})
    assert {'conv1', 'pool1', 'up', 'fuse', 'score'} <= set(kept)


def test_compiled_form_is_one_graph(tmp_path):
    """torch.compile sees the whole pass, with no break back to Python between layers (a
    break would leave each piece on its own, without planned buffers). Compiling itself
    takes tens of seconds; the benchmark checks the compiled pass against Caffe."""
    torch = torch_or_skip()
    from bench.torchnet import CaffeNet, Inference
    definition = tiny_fcn(False, depth=1)
    _, weights = caffe_net_and_weights(definition, tmp_path, seed=3)
    run = Inference(CaffeNet(definition, weights, pb.TEST), 'plain', ['score'])
    with torch.inference_mode():
        explained = torch._dynamo.explain(run.forward)(
            {'data': torch.from_numpy(nets.random_image(24, 20, seed=5))})
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def test_torch_workers_run_without_caffes_library_settings():
    env = {'PATH': '/bin', 'OMP_WAIT_POLICY': 'PASSIVE', 'GOMP_SPINCOUNT': '0',
           'OMP_NUM_THREADS': '2', 'MKL_THREADING_LAYER': 'GNU', 'FCN_BLAS': 'mkl',
           'LD_LIBRARY_PATH': '/cache/blas/mkl:/opt/lib', 'FCN_ADAPT_THREADS': '1'}
    caffe_set = {'MKL_THREADING_LAYER': 'GNU', 'FCN_BLAS': 'mkl',
                 'LD_LIBRARY_PATH': '/cache/blas/mkl:/opt/lib'}
    started = {'PATH': '/bin', 'LD_LIBRARY_PATH': '/opt/lib', 'OMP_NUM_THREADS': '2'}
    assert bench_main.torch_env(env, started, caffe_set) == {
        'PATH': '/bin', 'LD_LIBRARY_PATH': '/opt/lib', 'OMP_NUM_THREADS': '2',
        'FCN_ADAPT_THREADS': '0'}
    # A variable the user changed after caffe_env set it is the user's.
    env['FCN_BLAS'] = 'default'
    assert bench_main.torch_env(env, started, caffe_set)['FCN_BLAS'] == 'default'


def test_torch_worker_keeps_pytorchs_own_thread_count_and_clean_environment(tmp_path,
                                                                           monkeypatch):
    torch_or_skip()
    definition = tiny_fcn(False)
    net, weights = caffe_net_and_weights(definition, tmp_path, seed=3)
    np.savez(tmp_path / 'weights.npz', **weights)
    np.savez(tmp_path / 'inputs.npz', data=nets.random_image(24, 20, seed=5))
    config = {'deploy': str(tmp_path / 'net.prototxt'), 'inputs': str(tmp_path / 'inputs.npz'),
              'weights': str(tmp_path / 'weights.npz'), 'threads': None,
              'torch_form': 'channels_last'}
    monkeypatch.setattr(bench_main, 'CAFFE_ENV_SET', {'MKL_THREADING_LAYER': 'GNU'})
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(('OMP_', 'MKL_', 'GOMP_'))}
    env.update(PYTHONPATH=str(paths.REPO), OMP_WAIT_POLICY='PASSIVE', GOMP_SPINCOUNT='0',
               MKL_THREADING_LAYER='GNU')
    worker = bench_main.Worker('torch-forward', config, env, label='torch@channels_last')
    try:
        info = worker.info()
    finally:
        worker.close()
    own = subprocess.run([sys.executable, '-c', 'import torch; print(torch.get_num_threads())'],
                         capture_output=True, text=True, env=env, check=True)
    assert info['torch']['threads'] == int(own.stdout)
    assert info['torch']['form'] == 'channels_last'
    assert info['env']['FCN_ADAPT_THREADS'] == '0'
    assert not {'OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'MKL_THREADING_LAYER'} & set(info['env'])


def test_the_fastest_form_is_the_baseline_and_every_form_has_its_ratio():
    def info(**extra):
        return {'peak_mb': 100.0, 'baseline_mb': 50.0, 'libraries': [], 'openblas': {}, **extra}
    part = {'samples': {'caffe-forward': [2.0, 2.0, 2.0], 'torch@channels_last': [2.0, 2.4, 2.2],
                        'torch@layers': [4.0, 4.0, 3.0], 'sgemm': [1.0, 1.0, 1.0]},
            'flops': 4e9,
            'infos': {'caffe-forward': info(), 'torch@channels_last': info(torch={'form': 'cl'}),
                      'torch@layers': info()}}
    figures = bench_main.compared(part, 4e9)
    assert figures['torch']['form'] == 'channels_last'
    assert figures['ratio'] == 0.909  # rounds of 1.0, 0.833, 0.909
    assert figures['torch_forms']['layers']['ratio'] == 0.5
    assert figures['torch_forms']['layers']['median_s'] == 4.0
    # Another BLAS is compared with the baseline's rounds.
    blas = {'forward': {'caffe@other': ([1.0, 1.2, 1.1], info())}}
    other = bench_main.compared_blas(blas, {'forward': part}, 4e9, {'forward': figures})
    assert other['other']['forward']['ratio_to_torch'] == 0.5
    lines = report.form_lines(figures, {'compiled': 'no C++ compiler'})
    assert [line.split()[0] for line in lines[1:]] == ['channels_last', 'layers', 'compiled']
    assert lines[1].endswith('<- baseline') and not lines[2].endswith('<- baseline')
    assert 'not timed: no C++ compiler' in lines[3]
