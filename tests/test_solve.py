"""solve.py on a tiny FCN: training with validation, logs, plots and atomic snapshots;
SIGINT/SIGTERM snapshot and exit; resuming continues at the snapshot's iteration."""
import csv
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import caffe

from fcn import nets, paths, prototxt, runs
from fcn.training import start
from solve import solve as solve_command
from checks import stress
from fcn import surgery
from fcn.training import trainer

caffe.set_mode_cpu()


def tiny_stage(tmp_path, **settings):
    solver = stress.write_model(tmp_path / 'model', max_iter=20, snapshot=10)
    return trainer.TrainingRun(name='tiny', solver=solver, run_dir=tmp_path / 'run',
                         heads=stress.heads(), **settings)


def log_iterations(run_dir):
    with open(run_dir / 'train_log.csv', newline='') as f:
        return [int(row['iteration']) for row in csv.DictReader(f)]


def params_of(weights):
    from caffe.proto import caffe_pb2
    net = caffe_pb2.NetParameter.FromString(Path(weights).read_bytes())
    return {layer.name: [np.array(blob.data) for blob in layer.blobs]
            for layer in net.layer if layer.blobs}


def test_training_validates_logs_and_snapshots(tmp_path, capsys):
    training = tiny_stage(tmp_path)
    assert trainer.train(training, trainer.StopRequest())
    run = training.run_dir
    states = sorted((run / 'snapshots').glob('*.solverstate'))
    assert [runs.snapshot_iteration(s) for s in states] == [10, 20]
    assert (run / 'final.caffemodel').read_bytes() == \
        (run / 'snapshots' / 'tiny_iter_20.caffemodel').read_bytes()
    assert not any((run / '.snapshot-scratch').iterdir())  # nothing half-written left
    assert log_iterations(run) == list(range(1, 21))
    validations = json.loads((run / 'val_log.json').read_text())
    assert [v['iteration'] for v in validations] == [10, 20]
    assert 0 <= validations[-1]['label']['mean_iu'] <= 1
    assert validations[-1]['label']['n_images'] == 6
    for plot in ('loss.png', 'mean_iu.png'):
        assert (run / plot).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    # Caffe is given absolute net paths and never snapshots by itself
    param = prototxt.read_solver(run / 'solver.prototxt')
    assert Path(param.train_net).is_absolute() and param.snapshot == 0
    # upsampling was filled with bilinear kernels and stayed fixed (lr_mult 0)
    upscore = params_of(run / 'final.caffemodel')['upscore'][0].reshape(3, 3, 4, 4)
    np.testing.assert_allclose(upscore[1, 1], surgery.upsample_filter(4))
    assert not upscore[0, 1].any()
    # the state names its weights by bare name: the run folder can move
    from caffe.proto import caffe_pb2
    state = caffe_pb2.SolverState()
    state.ParseFromString(states[-1].read_bytes())
    assert state.learned_net == 'tiny_iter_20.caffemodel' and state.iter == 20


# SIGTERM twice: a scheduler signals every process of a job, and the job script passes
# its own signal on; the stop it asks for is one, with a snapshot.
@pytest.mark.parametrize('signals', [[signal.SIGINT], [signal.SIGTERM],
                                     [signal.SIGTERM, signal.SIGTERM]])
def test_a_signal_snapshots_and_resume_continues_there(tmp_path, signals):
    signum = signals[0]
    solver = stress.write_model(tmp_path / 'model', max_iter=100000, snapshot=100000)
    child = textwrap.dedent(f'''
        import sys, caffe
        from checks import stress
        from fcn.training import start, trainer
        caffe.set_mode_cpu()
        training = trainer.TrainingRun(name='tiny', solver={str(solver)!r},
                                       run_dir={str(tmp_path / 'run')!r}, heads=stress.heads(),
                                       test_every=0)
        sys.exit(start.launch(training))
    ''')
    process = subprocess.Popen([sys.executable, '-c', child],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / 'run' / 'train_log.csv'
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not log.exists() or
                                           len(log.read_text().splitlines()) < 30):
        time.sleep(0.05)
    for each in signals:
        process.send_signal(each)
        time.sleep(0.05)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    assert 'stopped by' in out
    state = runs.RunFolder(tmp_path / 'run').latest_snapshot()
    stopped_at = runs.snapshot_iteration(state)
    assert stopped_at >= 29
    assert log_iterations(tmp_path / 'run')[-1] == stopped_at

    training = trainer.TrainingRun(name='tiny', solver=solver, run_dir=tmp_path / 'run',
                          heads=stress.heads(), resume=state, steps=5, test_every=0)
    solver_obj, original = trainer.build_solver(training)
    runner = trainer.Trainer(solver_obj, training, 0, original)
    runner.start()
    assert solver_obj.iter == stopped_at
    saved = params_of(state.with_suffix('.caffemodel'))
    for name, blobs in saved.items():
        for blob, restored in zip(blobs, solver_obj.net.params[name]):
            np.testing.assert_array_equal(blob, restored.data.ravel())
    assert runner.run(trainer.StopRequest())
    assert solver_obj.iter == stopped_at + 5
    assert log_iterations(tmp_path / 'run') == list(range(1, stopped_at + 6))


def test_keep_snapshots_and_resume_auto(tmp_path):
    training = tiny_stage(tmp_path, keep_snapshots=1, snapshot_every=5, test_every=0)
    assert trainer.train(training, trainer.StopRequest())
    states = list((training.run_dir / 'snapshots').glob('*'))
    assert sorted(p.name for p in states) == ['tiny_iter_20.caffemodel',
                                              'tiny_iter_20.solverstate']
    assert training.folder.latest_snapshot() == training.run_dir / 'snapshots' / \
        'tiny_iter_20.solverstate'
    assert runs.RunFolder(tmp_path / 'elsewhere').latest_snapshot() is None


def test_initial_weights_follow_the_model_table(tmp_path, monkeypatch):
    from models.specs import MODELS
    monkeypatch.setattr(paths, 'RUNS_DIR', tmp_path / 'runs')
    monkeypatch.setattr(paths, 'WEIGHTS_DIR', tmp_path / 'weights')
    with pytest.raises(nets.UsageError, match=r'train voc-fcn32s first \(`make voc-fcn32s`\)'):
        start.init_weights(MODELS['voc-fcn16s'])
    with pytest.raises(nets.UsageError, match='vgg16-fcn.caffemodel, which does not exist'):
        start.init_weights(MODELS['voc-fcn32s'])
    # Late fusion starts from the snapshots the reference took (colour 28000, HHA 60000);
    # a missing one is named with the ways out.
    fusion = MODELS['nyud-fcn32s-color-hha']
    runs = tmp_path / 'runs'
    for name in ('nyud-fcn32s-color', 'nyud-fcn32s-hha'):
        (runs / name / 'snapshots').mkdir(parents=True)
        (runs / name / 'final.caffemodel').write_bytes(b'')
    with pytest.raises(nets.UsageError, match=r'nyud-fcn32s-color_iter_28000.caffemodel, '
                       r'which does not exist: .*keep its snapshot of iteration 28000.*'
                       r'--init-from final'):
        start.init_weights(fusion)
    for name, iteration in (('nyud-fcn32s-color', 28000), ('nyud-fcn32s-hha', 60000)):
        (runs / name / 'snapshots' / f'{name}_iter_{iteration}.caffemodel').write_bytes(b'')
    fused = [(file.weights, file.modality) for file in start.init_weights(fusion)]
    assert fused == [(runs / 'nyud-fcn32s-color/snapshots/nyud-fcn32s-color_iter_28000'
                      '.caffemodel', 'color'),
                     (runs / 'nyud-fcn32s-hha/snapshots/nyud-fcn32s-hha_iter_60000'
                      '.caffemodel', 'hha')]
    assert [file.weights for file in start.init_weights(fusion, init_from='final')] == \
        [runs / 'nyud-fcn32s-color/final.caffemodel', runs / 'nyud-fcn32s-hha/final.caffemodel']
    # --init-from best: the best-scored iteration whose snapshot still exists
    with pytest.raises(nets.UsageError, match=r'--init-from best: \S+/nyud-fcn32s-color/'
                       r'val_log.json does not exist: train nyud-fcn32s-color first'):
        start.init_weights(fusion, init_from='best')
    for name, scores in (('nyud-fcn32s-color', {26000: 0.31, 28000: 0.30, 30000: 0.35}),
                         ('nyud-fcn32s-hha', {58000: 0.2, 60000: 0.25})):
        (runs / name / 'val_log.json').write_text(json.dumps(
            [{'iteration': i, 'label': {'mean_iu': m}} for i, m in scores.items()]))
    assert [file.weights.name for file in start.init_weights(fusion, init_from='best')] == \
        ['nyud-fcn32s-color_iter_28000.caffemodel', 'nyud-fcn32s-hha_iter_60000.caffemodel']
    (runs / 'nyud-fcn32s-color/snapshots/nyud-fcn32s-color_iter_30000.caffemodel').write_bytes(b'')
    assert start.init_weights(fusion, init_from='best')[0].weights.name == \
        'nyud-fcn32s-color_iter_30000.caffemodel'
    assert start.init_weights(MODELS['toy-vgg16']) == ()
    mine, = start.init_weights(MODELS['voc-fcn32s'], 'mine.caffemodel')
    assert (mine.weights, mine.modality) == (Path('mine.caffemodel'), '')


def test_command_line_errors_are_clear():
    with pytest.raises(nets.UsageError, match='--steps 0 is out of range'):
        solve_command.main(['voc-fcn32s', '--steps', '0'])
    with pytest.raises(nets.UsageError, match="unknown model 'voc-fcn64s'"):
        solve_command.main(['voc-fcn64s'])


def test_divergence_stops_cleanly_instead_of_corrupting_the_heap(tmp_path):
    """A far too high learning rate turns the weights NaN; Caffe's CPU max pooling would
    then write before its buffer and the process would die in free() at exit. solve.py
    stops the step first, with a clear error (in a fresh process: the heap is at stake)."""
    code, _, ended, crashes = stress.run_one(tmp_path, 'diverging', 400)
    assert (code, ended, crashes) == (1, 'diverged', [])
    assert not (tmp_path / 'run' / 'final.caffemodel').exists()
    assert 'nan' not in (tmp_path / 'run' / 'train_log.csv').read_text()  # stopped in time


def test_a_fixed_random_seed_makes_training_repeatable(tmp_path):
    """What the toy solvers' random_seed buys: Xavier fillers and dropout draw the same
    numbers, so two runs end with the same weights bit for bit; without a seed Caffe seeds
    from the clock and they differ."""
    from caffe import layers as L
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[4, 3, 8, 8]), dict(dim=[4])],
                                  data_filler=[dict(type='gaussian', std=1),
                                               dict(type='constant', value=1)], ntop=2)
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3,
                           weight_filler=dict(type='xavier'))
    n.drop = L.Dropout(n.conv, dropout_ratio=0.5, in_place=True)
    n.fc = L.InnerProduct(n.drop, num_output=2, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.fc, n.label)
    (tmp_path / 'net.prototxt').write_text(str(n.to_proto()))

    def trained(seed_line):
        solver_path = tmp_path / 'solver.prototxt'
        solver_path.write_text(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.1\n'
                               f'lr_policy: "fixed"\ntype: "Adam"\n{seed_line}')
        solver = caffe.get_solver(str(solver_path))
        solver.step(3)
        return [blob.data.copy() for blobs in solver.net.params.values() for blob in blobs]

    seeded = [trained('random_seed: 1337\n') for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(*seeded))
    unseeded = [trained('') for _ in range(2)]
    assert not all(np.array_equal(a, b) for a, b in zip(*unseeded))
