"""Caffe's thread count fitted to the cores other programs leave free (fcn/runtime/threads.py)."""
import json
import os
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest

from fcn.runtime import threads
from fcn.training import trainer
from bench import contention

CLOCK_TICKS = threads.CLOCK_TICKS


@pytest.mark.parametrize('others, most, count', [
    (0.0, 2, 2), (0.45, 2, 2), (0.55, 2, 1), (1.0, 2, 1), (3.0, 2, 1),
    (0.0, 1, 1), (2.0, 1, 1), (3.4, 8, 5), (3.6, 8, 4), (0.2, 8, 8)])
def test_threads_are_the_cores_the_others_leave_at_least_one(others, most, count):
    assert threads.threads_for(others, most) == count


def test_busy_ticks_count_running_time_of_the_given_cpus_only(tmp_path):
    stat = tmp_path / 'stat'
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(
        'cpu  900 90 900 9000 900 9 9 900 0 0\n'
        'cpu0 100 10 200 5000 300 1 2 400 50 0\n'
        'cpu1 1000 20 30 4000 500 3 4 500 0 0\n'
        'cpu10 7 0 0 0 0 0 0 0 0 0\n'
        'intr 123456 1 2 3\n'
        'ctxt 99999\n')
    assert threads.busy_ticks({0}, stat) == 100 + 10 + 200 + 1 + 2
    assert threads.busy_ticks({1, 10}, stat) == 1000 + 20 + 30 + 3 + 4 + 7
    assert threads.busy_ticks({2}, stat) == 0
    # The real file: this process's own CPU time shows up in it.
    assert threads.busy_ticks(set(range(4096))) > 0


class FakeMachine:
    """A clock and the two CPU-time counters CoreShare reads, moved by hand."""

    def __init__(self):
        self.now, self.busy_ticks, self.own_seconds = 100.0, 5000, 10.0

    def run(self, seconds, own_cores, other_cores):
        self.now += seconds
        self.own_seconds += seconds * own_cores
        self.busy_ticks += round(seconds * (own_cores + other_cores) * CLOCK_TICKS)


def fake_share(machine, most=2):
    calls = []
    share = threads.CoreShare(set_threads=calls.append, most=most, clock=lambda: machine.now,
                            busy=lambda: machine.busy_ticks, own=lambda: machine.own_seconds)
    return share, calls


def test_core_share_drops_to_the_free_cores_and_comes_back():
    machine = FakeMachine()
    share, calls = fake_share(machine)
    assert share.adapt() == 2  # the first call only starts a window
    machine.run(0.3, own_cores=1.4, other_cores=0.6)
    assert share.adapt() == 2 and calls == []  # within the window: nothing measured
    machine.run(0.3, own_cores=1.4, other_cores=0.6)
    assert share.adapt() == 1 and calls == [1]
    assert share.others == pytest.approx(0.6, abs=0.02)
    machine.run(0.6, own_cores=1.0, other_cores=1.0)
    assert share.adapt() == 1 and calls == [1]  # no call when nothing changes
    machine.run(0.6, own_cores=1.0, other_cores=0.1)
    assert share.adapt() == 2 and calls == [1, 2]
    assert share.others == pytest.approx(0.1, abs=0.02)


def test_a_stale_window_only_starts_a_new_one_and_restart_goes_back_to_the_default():
    machine = FakeMachine()
    share, calls = fake_share(machine)
    share.adapt()
    machine.run(0.6, own_cores=1.0, other_cores=1.0)
    assert share.adapt() == 1
    # Ten seconds without a call (the loop was elsewhere): that average says nothing now.
    machine.run(10.0, own_cores=0.0, other_cores=0.0)
    assert share.adapt() == 1 and calls == [1]
    machine.run(0.6, own_cores=1.0, other_cores=1.0)
    assert share.adapt() == 1
    share.restart()
    assert share.threads == 2 and calls == [1, 2]
    machine.run(0.6, own_cores=1.0, other_cores=1.0)
    assert share.adapt() == 2  # a new window first


def test_one_thread_alone_is_never_changed():
    machine = FakeMachine()
    share, calls = fake_share(machine, most=1)
    for _ in range(3):
        machine.run(1.0, own_cores=1.0, other_cores=1.0)
        assert share.adapt() == 1
    assert calls == []


def test_default_threads_follow_omp_num_threads_else_the_usable_cores(monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    assert threads.default_threads() == 3
    monkeypatch.setenv('OMP_NUM_THREADS', '5,2')  # nested levels: the outer count
    assert threads.default_threads() == 5
    monkeypatch.delenv('OMP_NUM_THREADS')
    assert threads.default_threads() == len(os.sched_getaffinity(0))


def test_fitting_is_off_under_the_switch(monkeypatch):
    monkeypatch.setattr(threads, '_share', None)
    monkeypatch.setenv(threads.SWITCH, '0')
    assert threads.share() is None and threads.adapt() is None
    threads.restart()  # nothing to restart: no error
    monkeypatch.setenv(threads.SWITCH, '1')
    assert threads.share() is threads.share() is not None


def test_a_real_busy_process_is_measured_as_one_core():
    """The measurement against a process that is known to use one core's worth of time."""
    calls = []
    share = threads.CoreShare(set_threads=calls.append, most=2)
    with contention.busy_process():
        share.adapt()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            time.sleep(0.05)
            share.adapt()
    # At least most of a core (more if anything else runs here too), and Caffe on one thread.
    assert share.others >= 0.7
    assert calls and calls[-1] == 1 and share.threads == 1


THREAD_PROBE = textwrap.dedent('''
    import ctypes, json, os, sys
    import numpy as np
    from fcn.runtime import caffe_env, threads
    import caffe
    caffe.set_mode_cpu()
    net_file = sys.argv[1]
    net = caffe.Net(net_file, caffe.TEST)
    rng = np.random.RandomState(0)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.randn(*blob.data.shape)
    net.blobs['data'].data[...] = rng.randn(*net.blobs['data'].data.shape)
    gomp = ctypes.CDLL('libgomp.so.1', mode=os.RTLD_NOLOAD)
    blas = ctypes.CDLL('libopenblas.so.0', mode=os.RTLD_NOLOAD)
    # MKL answers under Caffe's name where the tools chose it (caffe_env.py).
    blas_threads = getattr(blas, 'openblas_get_num_threads', None) or blas.MKL_Get_Max_Threads
    seen = {}
    for count in (2, 1, 2):
        threads.ThreadSetter()(count)
        out = net.forward()['out'].copy()
        seen[count] = [gomp.omp_get_max_threads(), blas_threads(), out]
    difference = float(np.abs(seen[1][2] - seen[2][2]).max() / np.abs(seen[2][2]).max())
    print(json.dumps({'two': seen[2][:2], 'one': seen[1][:2], 'difference': difference}))
''')


def test_the_thread_setter_reaches_openmp_and_the_blas_and_the_outputs_agree(tmp_path):
    net_file = tmp_path / 'net.prototxt'
    net_file.write_text(
        'layer { name: "data" type: "Input" top: "data" '
        'input_param { shape { dim: 1 dim: 8 dim: 64 dim: 64 } } }\n'
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        'convolution_param { num_output: 64 kernel_size: 3 pad: 1 } }\n'
        'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }\n'
        'layer { name: "out" type: "Convolution" bottom: "conv" top: "out" '
        'convolution_param { num_output: 16 kernel_size: 3 } }\n')
    done = subprocess.run(
        [sys.executable, '-c', THREAD_PROBE, str(net_file)],
        capture_output=True, text=True, timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '2'})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen['two'] == [2, 2] and seen['one'] == [1, 1]
    assert seen['difference'] < 1e-5  # the same numbers, up to the order of float sums


def test_the_trainer_says_when_the_thread_count_changes(monkeypatch):
    machine = FakeMachine()
    share, calls = fake_share(machine)
    monkeypatch.setattr(threads, '_share', share)
    said = []
    owner = SimpleNamespace(say=said.append)
    trainer.Trainer.fit_threads(owner)
    machine.run(0.6, own_cores=1.0, other_cores=1.0)
    trainer.Trainer.fit_threads(owner)
    machine.run(0.6, own_cores=1.0, other_cores=1.0)
    trainer.Trainer.fit_threads(owner)
    assert said == ['1 of 2 threads: other programs keep 1.0 cores busy']
    assert calls == [1]


def test_the_thread_count_is_not_fitted_on_a_gpu(monkeypatch):
    from fcn.runtime import devices
    modes = []
    fake_caffe = SimpleNamespace(set_device=modes.append, set_mode_gpu=lambda: modes.append('gpu'),
                                 set_mode_cpu=lambda: modes.append('cpu'))
    monkeypatch.setitem(sys.modules, 'caffe', fake_caffe)
    monkeypatch.setattr(devices, 'check_gpus', lambda gpus, need_nccl=False: None)
    monkeypatch.delenv(threads.SWITCH, raising=False)
    devices.select_device(SimpleNamespace(gpu=None))
    assert modes == ['cpu'] and threads.SWITCH not in os.environ
    devices.select_device(SimpleNamespace(gpu=0))
    assert modes == ['cpu', 0, 'gpu'] and os.environ[threads.SWITCH] == '0'
