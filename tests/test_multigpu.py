"""The multi-GPU launcher with Caffe's GPU calls stubbed at the narrowest seam: which calls
each rank makes and in what order, one process per GPU, the ranks agreeing on when to
stop, rank 0's duties, data sharding by rank; and the clear failures of --gpu/--gpus on a
build or machine that cannot use a GPU."""
import multiprocessing
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fcn.runtime import devices
from fcn.training import multigpu
from fcn import nets
from solve import solve as solve_command
from checks import stress
from fcn.training import trainer



class Recorder:
    """Stands in for the caffe module: records each call with its arguments."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name,) + args)
        return call


def test_a_rank_is_configured_before_its_solver_exists():
    caffe = Recorder()
    multigpu.configure_rank(caffe, gpu=3, rank=1, count=2)
    assert caffe.calls == [('set_device', 3), ('set_mode_gpu',), ('set_solver_count', 2),
                           ('set_solver_rank', 1), ('set_multiprocess', True)]


def test_nccl_broadcasts_then_reduces_every_iteration():
    events = []

    class NCCL:
        def __init__(self, solver, uid):
            events.append(('NCCL', solver, uid))

        def bcast(self):
            events.append(('bcast',))

    class Net:
        def after_backward(self, hook):
            events.append(('after_backward', hook))

    class Solver:
        param = type('Param', (), {'layer_wise_reduce': True})()
        net = Net()

        def add_callback(self, hook):
            events.append(('add_callback', hook))

    caffe = type('Caffe', (), {'NCCL': NCCL})
    solver = Solver()
    nccl = multigpu.attach_nccl(caffe, solver, b'uid')
    assert events == [('NCCL', solver, b'uid'), ('bcast',), ('add_callback', nccl),
                      ('after_backward', nccl)]


def record_rank(training, gpus, rank, uid, stop):
    """A stand-in for multigpu.run_rank: note what this process was given."""
    Path(training.run_dir, f'rank{rank}').write_text(f'{gpus[rank]} {len(gpus)} {uid.decode()}')


def failing_rank(training, gpus, rank, uid, stop):
    """Rank 1 dies; rank 0 would wait for it forever (as in an NCCL all-reduce)."""
    if rank == 1:
        sys.exit(3)
    time.sleep(600)


def fake_stage(tmp_path):
    return trainer.TrainingRun(name='tiny', solver=tmp_path / 'solver.prototxt', run_dir=tmp_path,
                         heads=stress.heads())


def test_one_process_per_gpu_each_with_its_rank(tmp_path):
    status = multigpu.launch(fake_stage(tmp_path), [2, 5], target=record_rank,
                          new_uid=lambda: b'nccl-id')
    assert status == 0
    assert (tmp_path / 'rank0').read_text() == '2 2 nccl-id'
    assert (tmp_path / 'rank1').read_text() == '5 2 nccl-id'


def test_a_failed_rank_stops_the_others(tmp_path):
    started = time.monotonic()
    status = multigpu.launch(fake_stage(tmp_path), [0, 1], target=failing_rank,
                          new_uid=lambda: b'x')
    assert status == 3
    assert time.monotonic() - started < 60


def stop_at_agreed_iteration(stop, rank, result):
    """Rank 1 is signalled at iteration 5 while the ranks run at different speeds."""
    for iteration in range(1, 200):
        time.sleep(0.001 * (1 + rank * 3))
        if rank == 1 and iteration == 5:
            stop.set(signal.SIGTERM)
        if stop.requested():
            result[rank] = iteration
            return


def test_ranks_stop_after_the_same_iteration():
    context = multiprocessing.get_context('spawn')
    stop = trainer.StopRequest.shared(context, 2)
    result = context.Array('i', 2)
    processes = [context.Process(target=stop_at_agreed_iteration,
                                 args=(stop.for_rank(rank), rank, result)) for rank in (0, 1)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert list(result) == [5, 5]
    assert stop.signum == signal.SIGTERM


def test_only_rank_0_validates_logs_and_snapshots(tmp_path):
    import caffe
    caffe.set_mode_cpu()
    solver_path = stress.write_model(tmp_path / 'model', max_iter=12, snapshot=4)
    training = trainer.TrainingRun(name='tiny', solver=solver_path, run_dir=tmp_path / 'run',
                          heads=stress.heads())
    solver, original = trainer.build_solver(training)
    runner = trainer.Trainer(solver, training, 1, original)
    runner.start()
    assert runner.run(trainer.StopRequest())
    assert solver.iter == 12
    run = tmp_path / 'run'
    assert not (run / 'snapshots').exists() and not (run / 'final.caffemodel').exists()
    assert not (run / 'train_log.csv').exists() and not (run / 'val_log.json').exists()


def test_the_data_layers_shard_the_training_set_by_rank(tmp_path):
    """configure_rank's settings reach the project's data layer when the net is set up.
    (In a fresh process: solver count and rank are process-wide in Caffe.)"""
    voc = stress.write_voc_set(tmp_path / 'voc', images=7)
    net = tmp_path / 'train.prototxt'
    net.write_text(str(stress.tiny_fcn(stress.voc_param('train', voc))))
    child = textwrap.dedent(f'''
        import caffe
        from fcn.training import multigpu
        class CPUCaffe:  # the GPU calls of configure_rank stubbed, the rest real
            def __getattr__(self, name):
                return (lambda *a: None) if name in ('set_device', 'set_mode_gpu') \\
                    else getattr(caffe, name)
        multigpu.configure_rank(CPUCaffe(), 0, 1, 3)
        net = caffe.Net({str(net)!r}, caffe.TRAIN)
        print(' '.join(net.layers[0].ids))
    ''')
    result = subprocess.run([sys.executable, '-c', child], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['1', '4']  # ids 1 and 4 of 0..6: rank 1 of 3


def test_gpu_checks_name_what_is_missing():
    with pytest.raises(nets.UsageError, match='CPU-only'):
        devices.check_gpus([0], has_cuda=lambda: False)
    with pytest.raises(nets.UsageError, match='has no NCCL'):
        devices.check_gpus([0, 1], need_nccl=True, has_cuda=lambda: True,
                           has_nccl=lambda: False)
    with pytest.raises(nets.UsageError, match='GPU 2 is not usable: 2 GPU'):
        devices.check_gpus([0, 2], need_nccl=True, has_cuda=lambda: True,
                           has_nccl=lambda: True, device_count=lambda: (2, '2 GPU(s) visible'))
    devices.check_gpus([0, 1], need_nccl=True, has_cuda=lambda: True, has_nccl=lambda: True,
                       device_count=lambda: (2, '2 GPU(s) visible'))


@pytest.mark.parametrize('flag', [['--gpu', '0'], ['--gpus', '0,1']])
def test_gpu_flags_on_this_cpu_only_build_fail_before_caffe_is_asked(flag):
    assert not devices.caffe_has_cuda()
    with pytest.raises(nets.UsageError, match='this Caffe build is CPU-only'):
        solve_command.main(['voc-fcn32s'] + flag)
