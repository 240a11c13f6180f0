"""What `make cluster-MODEL` submits, without a cluster (DRY_RUN=1 prints the sbatch
commands): one job per file make would make, each running that make target, after the
jobs of its inputs; finished stages left out as make decides; the devices and sbatch
options each job asks for. tests/test_cluster_slurm.py runs them on a real SLURM."""
import os
import shlex
import subprocess

import pytest

from fcn.paths import REPO


def dry_run(*args, data=None):
    """[(label, sbatch options, make target(s), make variables)] and the whole output."""
    env = {**os.environ, 'FCN_DATA_DIR': str(data)} if data else dict(os.environ)
    result = subprocess.run(['make', '--no-print-directory', *args, 'DRY_RUN=1'], cwd=REPO,
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = []
    for line in result.stdout.splitlines():
        if not line.startswith('sbatch '):
            continue
        words = shlex.split(line)
        script = words.index('pipeline/slurm-job.sh')
        options, rest = words[1:script], words[script + 1:]
        if rest[0] == '--exec':  # the job script's own option
            options, rest = options + rest[:2], rest[2:]
        separator = rest.index('--')
        targets, variables = rest[:separator], rest[separator + 1:]
        label = options[options.index('--job-name') + 1].removeprefix('fcn:')
        jobs.append((label, options, targets, variables))
    return jobs, result.stdout


def option(options, name):
    return options[options.index(name) + 1] if name in options else None


def test_the_toy_chain_is_one_job_per_file_make_would_make(tmp_path):
    """SHARDS=3: the scoring is an array job of 3 shards and a merge; CLUSTER_EXEC (here
    `env`, standing in for a container runtime) runs every make."""
    runs = tmp_path / 'runs'
    jobs, output = dry_run('cluster-toy-fcn8s', 'STEPS=2', 'VAL_IMAGES=3', 'SHARDS=3',
                           f'RUNS={runs}', f'BASE_WEIGHTS={runs}/weights', 'GPUS_PER_JOB=2',
                           'PARTITION=gpu', 'ACCOUNT=lab', 'TIME_LIMIT=2-00:00:00',
                           'SBATCH_FLAGS=--qos=long --mem=32G',
                           'CLUSTER_EXEC=env TZ=UTC', data=tmp_path / 'data')
    assert 'made here first:' in output and str(tmp_path / 'data/toy/toy.json') in output
    labels = [job[0] for job in jobs]
    assert labels == ['toy-vgg16:train', 'toy-vgg16-fcn:surgery', 'toy-fcn32s:train',
                      'toy-fcn16s:train', 'toy-fcn8s:train', 'toy-fcn8s:shard',
                      'toy-fcn8s:merge']
    targets = [job[2] for job in jobs]
    assert targets[:5] == [[f'{runs}/toy-vgg16/final.caffemodel'],
                           [f'{runs}/weights/toy-vgg16-fcn.caffemodel'],
                           [f'{runs}/toy-fcn32s/final.caffemodel'],
                           [f'{runs}/toy-fcn16s/final.caffemodel'],
                           [f'{runs}/toy-fcn8s/final.caffemodel']]
    assert targets[5] == [f'{runs}/toy-fcn8s/score-shards/{i}-of-3.npz' for i in range(3)]
    assert targets[6] == [f'{runs}/toy-fcn8s/score.json']
    # each after the one before it: placeholders stand for the ids SLURM would give
    for (label, options, _, _), before in zip(jobs[1:], labels):
        assert option(options, '--dependency') == f'afterok:<{before}>', label
    assert option(jobs[0][1], '--dependency') is None
    # the jobs get the command line's pipeline variables, and their own devices
    pipeline = ['SHARDS=3', f'BASE_WEIGHTS={runs}/weights', f'RUNS={runs}', 'VAL_IMAGES=3',
                'STEPS=2']
    devices = {'train': ['GPUS=0,1'], 'surgery': [], 'shard': ['GPU=0'], 'merge': []}
    gres = {'train': 'gpu:2', 'surgery': None, 'shard': 'gpu:1', 'merge': None}
    for label, options, _, variables in jobs:
        kind = label.split(':')[1]
        assert sorted(variables) == sorted(pipeline + devices[kind]), label
        assert option(options, '--gres') == gres[kind], label
        assert option(options, '--partition') == 'gpu' and option(options, '--account') == 'lab'
        assert option(options, '--time') == '2-00:00:00'
        assert option(options, '--signal') == 'B:TERM@600' and '--requeue' in options
        assert option(options, '--open-mode') == 'append'  # a requeued job's log goes on
        assert options[-4:] == ['--qos=long', '--mem=32G', '--exec', 'env TZ=UTC']
    assert option(jobs[5][1], '--array') == '0-2'
    assert jobs[5][1][jobs[5][1].index('--output') + 1] == f'{runs}/toy-fcn8s/slurm/shard-%A_%a.log'


def test_finished_stages_are_left_out_as_make_decides(tmp_path):
    runs = tmp_path / 'runs'
    made = [runs / 'toy-vgg16/final.caffemodel', runs / 'weights/toy-vgg16-fcn.caffemodel',
            runs / 'toy-fcn32s/final.caffemodel']
    for age, path in enumerate(made):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'')
        os.utime(path, (1000 + age, 1000 + age))
    common = ['cluster-toy-fcn8s', f'RUNS={runs}', f'BASE_WEIGHTS={runs}/weights']
    jobs, _ = dry_run(*common, data=tmp_path / 'data')
    assert [job[0] for job in jobs] == ['toy-fcn16s:train', 'toy-fcn8s:train', 'toy-fcn8s:score']
    assert option(jobs[0][1], '--dependency') is None
    # a classifier trained again makes everything after it stale
    os.utime(made[0], (2000, 2000))
    jobs, _ = dry_run(*common, data=tmp_path / 'data')
    assert [job[0] for job in jobs] == ['toy-vgg16-fcn:surgery', 'toy-fcn32s:train',
                                        'toy-fcn16s:train', 'toy-fcn8s:train', 'toy-fcn8s:score']
    for path in made:
        path.write_bytes(b'')
    for model in ('toy-fcn16s', 'toy-fcn8s'):
        (runs / model).mkdir()
        (runs / model / 'final.caffemodel').write_bytes(b'')
    (runs / 'toy-fcn8s/score.json').write_text('{}')
    jobs, output = dry_run(*common, data=tmp_path / 'data')
    assert jobs == [] and 'nothing to submit' in output


def test_late_fusion_waits_for_both_nets(tmp_path):
    runs = tmp_path / 'runs'
    jobs, output = dry_run('cluster-nyud-fcn32s-color-hha', 'GPUS_PER_JOB=4', f'RUNS={runs}',
                           f'BASE_WEIGHTS={runs}/weights', data=tmp_path / 'data')
    assert str(tmp_path / 'data/downloads/nyud.prepared') in output  # made here first
    if not (REPO / 'weights/VGG_ILSVRC_16_layers.caffemodel').exists():
        assert 'weights/VGG_ILSVRC_16_layers.caffemodel' in output  # its download hint
    after = {label: option(options, '--dependency') for label, options, _, _ in jobs}
    assert after == {'vgg16-fcn:surgery': None,
                     'nyud-fcn32s-color:train': 'afterok:<vgg16-fcn:surgery>',
                     'nyud-fcn32s-hha:train': 'afterok:<vgg16-fcn:surgery>',
                     'nyud-fcn32s-color-hha:train':
                         'afterok:<nyud-fcn32s-color:train>:<nyud-fcn32s-hha:train>',
                     'nyud-fcn32s-color-hha:score': 'afterok:<nyud-fcn32s-color-hha:train>'}
    train = next(job for job in jobs if job[0] == 'nyud-fcn32s-hha:train')
    assert 'GPUS=0,1,2,3' in train[3] and option(train[1], '--gres') == 'gpu:4'
    # the surgery job's log goes with the first stage that starts from its weights
    surgery = jobs[0][1]
    assert option(surgery, '--output') == f'{runs}/nyud-fcn32s-color/slurm/surgery-vgg16-fcn-%j.log'


def test_cluster_all_takes_the_models_whose_data_is_prepared(tmp_path):
    data = tmp_path / 'data'
    (data / 'downloads').mkdir(parents=True)
    (data / 'downloads' / 'siftflow.prepared').write_text('')
    jobs, _ = dry_run('cluster-all', f'RUNS={tmp_path}/runs', data=data)
    trained = sorted(label.split(':')[0] for label, *_ in jobs if label.endswith(':train'))
    assert trained == ['siftflow-fcn16s', 'siftflow-fcn32s', 'siftflow-fcn8s']
    # each stage is submitted once though three chains need siftflow-fcn32s
    assert len([label for label, *_ in jobs if label.endswith(':score')]) == 3


@pytest.mark.parametrize('shards', ['0', 'x'])
def test_shards_must_be_a_count(shards):
    result = subprocess.run(['make', '-n', 'toy-fcn8s', f'SHARDS={shards}'], cwd=REPO,
                            capture_output=True, text=True)
    if shards == '0':  # 0 and 1: not sharded
        assert result.returncode == 0 and '--shard' not in result.stdout
    else:
        assert result.returncode != 0 and 'SHARDS=x: give the number of pieces' in result.stderr
