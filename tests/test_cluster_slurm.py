"""The pipeline on a real SLURM (`make test-cluster`; skipped in `make test`): a
single-node cluster started here (tests/local_slurm.py) runs the toy chain submitted by
`make cluster-toy-fcn8s`, with a 3-shard evaluation, and the jobs must run exactly the
commands `make toy-fcn8s` runs and leave what make leaves; a stage stopped mid-run is
requeued and resumes from its snapshot. Every daemon started is stopped at the end."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import local_slurm

from fcn.paths import REPO
pytestmark = pytest.mark.skipif(
    not os.environ.get('FCN_CLUSTER_TESTS'),
    reason='the real-SLURM tests run with `make test-cluster` (FCN_CLUSTER_TESTS=1)')
CHAIN = ['toy-vgg16', 'toy-fcn32s', 'toy-fcn16s', 'toy-fcn8s']
# A cluster of one CPU-only node: each job takes one of its 2 CPUs.
ON_THE_CPU = ['GPUS_PER_JOB=0', 'CPUS_PER_JOB=1']


@pytest.fixture(scope='module')
def slurm():
    reason = local_slurm.install()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix='fcn-slurm-'))
    cluster = local_slurm.LocalSlurm(folder)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    subprocess.run([sys.executable, 'data/toy.py', '--out', str(root / 'toy'),
                    '--seg-train', '6', '--seg-val', '3', '--cls-train', '40', '--cls-val', '4'],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    return root


def make(slurm, data, *args, check=True):
    result = subprocess.run(['make', '--no-print-directory', *args], cwd=REPO,
                            capture_output=True, text=True, timeout=600,
                            env={**slurm.env(), 'FCN_DATA_DIR': str(data)})
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def submitted(output):
    """{label: job id} from pipeline.slurm's lines '   ID  model:kind ...'."""
    return {match.group(2): match.group(1)
            for match in re.finditer(r'^\s*(\d+)\s+(\S+:\w+)', output, re.MULTILINE)}


def jobs(slurm):
    """{job id: [state of each task]} of every job the cluster still knows."""
    lines = subprocess.run(['squeue', '--noheader', '--states', 'all', '--format', '%i %T'],
                           env=slurm.env(), capture_output=True, text=True,
                           check=True).stdout.split('\n')
    states = {}
    for line in filter(None, lines):
        task, state = line.split()  # JOB, or JOB_TASK in an array
        states.setdefault(task.split('_')[0], []).append(state)
    return states


def wait_for(slurm, ids, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = jobs(slurm)
        if all(state in ('COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT')
               for job in ids for state in states.get(job, ['?'])):
            return {job: states[job] for job in ids}
        time.sleep(1)
    raise AssertionError(f'jobs still running after {timeout} s: {jobs(slurm)}\n'
                         f'{slurm.log_tail()}')


def tool_commands(text):
    """The pipeline tools' command lines in make's output or a job's log."""
    lines = text.replace('\\\n', ' ').splitlines()
    return [line for line in lines if re.match(r'^\S*python\S* solve/(solve|score|surgery)\.py',
                                               line)]


def validated(run):
    return [record['iteration'] for record in json.loads((run / 'val_log.json').read_text())]


def logs(runs):
    return {path: path.read_text() for path in sorted(runs.glob('**/slurm/*.log'))}


def iterations(csv_path):
    with open(csv_path, newline='') as f:
        return [int(row['iteration']) for row in csv.DictReader(f)]


@pytest.fixture(scope='module')
def toy_chain(slurm, data, tmp_path_factory):
    """The toy chain, 2 iterations a stage, scored on 3 val images in 3 shards, submitted
    by make: (runs folder, the pipeline's variables, submission output, final states)."""
    runs = tmp_path_factory.mktemp('cluster') / 'runs'
    variables = ['STEPS=2', 'VAL_IMAGES=3', 'SHARDS=3', f'RUNS={runs}',
                 f'BASE_WEIGHTS={runs}/weights']
    started = time.monotonic()
    output = make(slurm, data, 'cluster-toy-fcn8s', *variables, *ON_THE_CPU).stdout
    ids = submitted(output)
    states = wait_for(slurm, list(ids.values()))
    print(f'toy chain on SLURM: {time.monotonic() - started:.0f} s')
    return runs, variables, ids, states


def test_the_toy_chain_runs_on_slurm_as_make_runs_it(slurm, data, toy_chain, tmp_path):
    runs, variables, ids, states = toy_chain
    # one job per file make makes, in the chain's order; the 3 shards are one array job
    assert list(ids) == ['toy-vgg16:train', 'toy-vgg16-fcn:surgery', 'toy-fcn32s:train',
                         'toy-fcn16s:train', 'toy-fcn8s:train', 'toy-fcn8s:shard',
                         'toy-fcn8s:merge'], ids
    assert all(state == ['COMPLETED'] for job, state in states.items()
               if job != ids['toy-fcn8s:shard']), (states, logs(runs))
    assert states[ids['toy-fcn8s:shard']] == ['COMPLETED'] * 3

    # The jobs ran exactly the commands of `make toy-fcn8s` with the same variables ...
    fresh = tmp_path / 'fresh-runs'
    planned = make(slurm, data, '-n', 'toy-fcn8s', 'STEPS=2', 'VAL_IMAGES=3', 'SHARDS=3',
                   f'RUNS={fresh}', f'BASE_WEIGHTS={fresh}/weights').stdout
    expected = [line.replace(str(fresh), str(runs)) for line in tool_commands(planned)]
    ran = [command for text in logs(runs).values() for command in tool_commands(text)]
    assert len(expected) == 9 and sorted(ran) == sorted(expected)
    # ... each job its own, dependencies first; and make finds nothing left to do.
    for path, text in logs(runs).items():
        assert len(tool_commands(text)) == 1, path
    left = make(slurm, data, '-n', 'toy-fcn8s', *variables).stdout
    assert tool_commands(left) == []

    for stage in CHAIN:
        assert validated(runs / stage) == [2]
        assert iterations(runs / stage / 'train_log.csv') == [1, 2]

    # The merged shards equal make's own scoring of the same weights, unsharded.
    whole = tmp_path / 'whole'
    (whole / 'toy-fcn8s').mkdir(parents=True)
    shutil.copy(runs / 'toy-fcn8s' / 'final.caffemodel', whole / 'toy-fcn8s')
    final = whole / 'toy-fcn8s' / 'final.caffemodel'
    make(slurm, data, str(whole / 'toy-fcn8s' / 'score.json'), '-o', str(final),
         'STEPS=2', 'VAL_IMAGES=3', f'RUNS={whole}', f'BASE_WEIGHTS={whole}/weights')
    merged = json.loads((runs / 'toy-fcn8s' / 'score.json').read_text())
    reference = json.loads((whole / 'toy-fcn8s' / 'score.json').read_text())
    assert merged['n_images'] == reference['n_images'] == 3
    assert merged['confusion'] == reference['confusion']
    for key in ('pixel_acc', 'mean_acc', 'mean_iu', 'fwavacc', 'per_class_iu'):
        assert merged[key] == reference[key], key
    shards = [json.loads((runs / 'toy-fcn8s' / 'score-shards' / f'{i}-of-3.json').read_text())
              for i in range(3)]
    assert [shard['n_images'] for shard in shards] == [1, 1, 1]

    status = make(slurm, data, 'cluster-status', f'RUNS={runs}').stdout
    for label, job in ids.items():
        assert re.search(rf'^\s*{job}\s+{label.split(":")[1]}\s+COMPLETED', status, re.M), status
    assert f'{runs}/toy-fcn8s/slurm/merge-{ids["toy-fcn8s:merge"]}.log' in status


def test_a_stopped_stage_resumes_from_its_snapshot(slurm, data, toy_chain, tmp_path):
    """Only what is not done is submitted: toy-fcn8s (60 iterations) and its score. The
    stage is cancelled (plain scancel: the job ends, its score job with it; submitted
    again, it resumes), then stopped as a time limit does (SIGTERM to the job script) and
    as a preemption does (to every process): each time it requeues and resumes where it
    stopped, and the score job waits for it."""
    runs = tmp_path / 'runs'
    shutil.copytree(toy_chain[0], runs, ignore=shutil.ignore_patterns('slurm'))
    shutil.rmtree(runs / 'toy-fcn8s')
    variables = ['STEPS=60', 'VAL_IMAGES=3', f'RUNS={runs}', f'BASE_WEIGHTS={runs}/weights']
    first = submitted(make(slurm, data, 'cluster-toy-fcn8s', *variables, *ON_THE_CPU).stdout)
    assert list(first) == ['toy-fcn8s:train', 'toy-fcn8s:score']
    again = make(slurm, data, 'cluster-toy-fcn8s', *variables, *ON_THE_CPU).stdout
    assert again.count('still queued from before') == 2 and submitted(again) == first
    log = runs / 'toy-fcn8s' / 'train_log.csv'

    def stop(train, after, *how):
        """scancel `how` once the job runs and has trained `after` more iterations."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if jobs(slurm).get(train) == ['RUNNING'] and log.exists() and \
                    len(iterations(log)) >= after:
                subprocess.run(['scancel', *how, train], env=slurm.env(), check=True)
                return
            time.sleep(0.2)
        raise AssertionError(f'{train} never reached iteration {after}: {logs(runs)}')

    stop(first['toy-fcn8s:train'], 3)
    assert wait_for(slurm, list(first.values())) == {job: ['CANCELLED'] for job in first.values()}
    cancelled = newest_snapshot(runs)
    ids = submitted(make(slurm, data, 'cluster-toy-fcn8s', *variables, *ON_THE_CPU).stdout)
    train = ids['toy-fcn8s:train']
    job_log = runs / 'toy-fcn8s' / 'slurm' / f'train-{train}.log'
    stop(train, cancelled + 3, '--batch', '--signal=TERM')
    deadline = time.monotonic() + 300
    while 'requeueing job' not in job_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    stop(train, newest_snapshot(runs) + 3, '--full', '--signal=TERM')
    states = wait_for(slurm, list(ids.values()))
    assert states == {job: ['COMPLETED'] for job in ids.values()}, logs(runs)

    text = '\n'.join(logs(runs).values())
    stops = [int(i) for i in re.findall(r'stopped by SIGTERM at iteration (\d+)', text)]
    resumes = [int(i) for i in re.findall(r'resumed from \S+_iter_(\d+)\.solverstate', text)]
    assert len(stops) == 3 and stops == resumes and stops == sorted(set(stops)), text
    assert stops[0] == cancelled and stops[-1] < 60
    assert text.count('requeueing job') == 2 and '(restart 2)' in job_log.read_text()
    assert iterations(log) == list(range(1, 61))  # each iteration once: resumed, not redone
    assert validated(runs / 'toy-fcn8s') == [60]
    snapshots = sorted(p.name for p in (runs / 'toy-fcn8s' / 'snapshots').glob('*.solverstate'))
    assert snapshots == sorted(f'toy-fcn8s_iter_{i}.solverstate' for i in stops + [60])
    assert json.loads((runs / 'toy-fcn8s' / 'score.json').read_text())['n_images'] == 3


def newest_snapshot(runs):
    """The iteration of the newest snapshot of toy-fcn8s."""
    names = (runs / 'toy-fcn8s' / 'snapshots').glob('*.solverstate')
    return max(int(re.search(r'_iter_(\d+)', p.name).group(1)) for p in names)
