"""The demo's scores across seeds and BLAS kernels: the band that a run on any machine
falls in.

Runs that differ only in rounding (another BLAS kernel, another CPU) follow different
paths through training; so do runs with other seeds, more widely. For each seed and each
kernel choice this makes a copy of the working tree (its tracked files as they are on
disk), sets the toy nets' seeds in it (every toy solver's random_seed and the order its
training data is drawn in), and runs `make demo` there from scratch under that kernel
choice: its own virtualenv, toy set and runs; the Caffe build comes from the shared
cache. Runs go one after another, so each has the machine to itself; run nothing else
meanwhile. Each run's report (runs/demo/) is kept in DIR/<seed>-<kernel>/.

A kernel choice is `default` (the environment as it is) or VAR=VALUE[,VAR=VALUE...]
added to it, e.g. OPENBLAS_CORETYPE=Sandybridge (OpenBLAS's AVX kernels without FMA,
which round differently from the FMA kernels most CPUs get) or FCN_BLAS=mkl.

Writes DIR/band.json and DIR/band.md (each run's classifier accuracy, mean IU of the three
FCNs and training time per stage, then the min-max band) and prints the table. A run
that misses a goal of the demo (GOALS) is marked; the exit status is 1 if any did.

    python -m bench.demo_band [--seeds 1337 7 42] [--kernels default OPENBLAS_CORETYPE=...]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import report

from fcn import runs
from fcn.paths import REPO
STAGES = (('classifier', 'toy-vgg16'), ('fcn32s', 'toy-fcn32s'), ('fcn16s', 'toy-fcn16s'),
          ('fcn8s', 'toy-fcn8s'))
# What every run must reach (%, the classifier's accuracy and the FCNs' mean IU) and the
# most training it may take (minutes, on the machine it ran on).
GOALS = {'classifier': 95.0, 'fcn32s': 50.0, 'fcn16s': 75.0, 'fcn8s': 88.0}
GOAL_TRAINING_MINUTES = 9.0
# The seed lines of the generated toy files: the solver's and the training data layer's.
SEED_PATTERNS = (('solver.prototxt', re.compile(r'^random_seed: \d+$', re.M), 'random_seed: {}'),
                 ('train.prototxt', re.compile(r'\\"seed\\": \d+'), '\\\\"seed\\\\": {}'))


class BandError(Exception):
    """A run that could not be made or read; the message names it."""


def tracked_copy(dest):
    """The repository's tracked files, as they are on disk now, copied into `dest`."""
    listing = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, capture_output=True,
                             check=True).stdout.decode().split('\0')
    for name in filter(None, listing):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def set_seed(tree, seed):
    """Every toy net's solver seed and training-data seed set to `seed` in `tree`."""
    for _, model in STAGES:
        for filename, pattern, replacement in SEED_PATTERNS:
            path = tree / 'models' / model / filename
            text, count = pattern.subn(replacement.format(seed), path.read_text())
            if count != 1:
                raise BandError(f'{path}: expected one seed line, found {count}')
            path.write_text(text)


def parse_kernel(choice):
    """'default' -> {}; 'A=1,B=2' -> {'A': '1', 'B': '2'}."""
    if choice == 'default':
        return {}
    pairs = [item.partition('=') for item in choice.split(',')]
    if not all(name and sep for name, sep, _ in pairs):
        raise BandError(f'--kernels {choice!r}: expected default or VAR=VALUE[,VAR=VALUE]')
    return {name: value for name, _, value in pairs}


def run_label(seed, choice):
    return f'{seed}-' + re.sub(r'[^A-Za-z0-9.]+', '_', choice)


def read_run(tree):
    """Scores (%) and training seconds of a finished demo in `tree`."""
    runs_dir = tree / 'runs'
    scores = json.loads((runs_dir / 'demo' / 'scores.json').read_text())
    validations = json.loads(runs.run_folder('toy-vgg16', runs_dir).val_log.read_text())
    result = {'classifier': 100 * validations[-1]['label']['pixel_acc']}
    for key, _ in STAGES[1:]:
        result[key] = 100 * scores[key]['mean_iu']
    seconds = {}
    for key, model in STAGES:
        rows = runs.run_folder(model, runs_dir).train_log.read_text().splitlines()
        header, last = rows[0].split(','), rows[-1].split(',')
        seconds[key] = float(last[header.index('seconds')])
    result['seconds'] = seconds
    result['training_minutes'] = sum(seconds.values()) / 60
    return result


def misses(result):
    missed = [key for key, goal in GOALS.items() if result[key] < goal]
    if result['training_minutes'] > GOAL_TRAINING_MINUTES:
        missed.append('time')
    return missed


def one_run(seed, choice, work, keep):
    """make demo in a fresh copy with this seed and kernel choice; its results."""
    tree = work / run_label(seed, choice)
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    tracked_copy(tree)
    set_seed(tree, seed)
    env = dict(os.environ, **parse_kernel(choice))
    for name in ('FCN_RUNS_DIR', 'FCN_WEIGHTS_DIR', 'FCN_DATA_DIR', 'MAKEFLAGS', 'MAKELEVEL'):
        env.pop(name, None)
    log = tree / 'demo.log'
    started = time.monotonic()
    with open(log, 'w') as out:
        status = subprocess.run(['make', 'demo'], cwd=tree, env=env, stdout=out,
                                stderr=subprocess.STDOUT).returncode
    if status != 0:
        tail = '\n'.join(log.read_text(errors='replace').splitlines()[-20:])
        raise BandError(f'make demo failed (exit {status}) in {tree}; {log} ends:\n{tail}')
    result = read_run(tree)
    result.update(seed=seed, kernel=choice, wall_minutes=(time.monotonic() - started) / 60)
    shutil.copytree(tree / 'runs' / 'demo', work / 'reports' / run_label(seed, choice),
                    dirs_exist_ok=True)
    if not keep:
        shutil.rmtree(tree)
    return result


def table(results):
    lines = ['| seed | kernel | classifier acc | FCN-32s | FCN-16s | FCN-8s | training (min) '
             '| classifier / 32s / 16s / 8s (s) | goals |', '|---' * 9 + '|']
    for r in results:
        stages = ' / '.join(f'{r["seconds"][key]:.0f}' for key, _ in STAGES)
        missed = misses(r)
        lines.append(f'| {r["seed"]} | {r["kernel"]} | {r["classifier"]:.1f} | '
                     f'{r["fcn32s"]:.1f} | {r["fcn16s"]:.1f} | {r["fcn8s"]:.1f} | '
                     f'{r["training_minutes"]:.1f} | {stages} | '
                     f'{"met" if not missed else "missed: " + ", ".join(missed)} |')
    if results:
        def band(key):
            values = [r[key] for r in results]
            return f'{min(values):.1f}-{max(values):.1f}'
        lines.append(f'| band | {len(results)} runs | {band("classifier")} | {band("fcn32s")} | '
                     f'{band("fcn16s")} | {band("fcn8s")} | {band("training_minutes")} | | |')
    return '\n'.join(lines) + '\n'


def write_atomically(path, text):
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seeds', type=int, nargs='+', default=[1337, 7, 42],
                        help='seeds of the toy nets (default: 1337, the committed one, 7, 42)')
    parser.add_argument('--kernels', nargs='+',
                        default=['default', 'OPENBLAS_CORETYPE=Sandybridge'],
                        help='kernel choices: default or VAR=VALUE[,VAR=VALUE] '
                             '(default: default and OPENBLAS_CORETYPE=Sandybridge)')
    parser.add_argument('--dir', type=Path, default=REPO / 'runs' / 'demo-band',
                        help='where the copies run and the results go '
                             '(default: runs/demo-band)')
    parser.add_argument('--keep', action='store_true',
                        help='keep each run\'s copy of the tree (about 60 MB with its venv)')
    args = parser.parse_args(argv)
    for choice in args.kernels:
        parse_kernel(choice)
    args.dir.mkdir(parents=True, exist_ok=True)
    results_path = args.dir / 'band.json'
    # A run already in band.json (same seed and kernel) is not repeated: an interrupted
    # band resumes.
    done = json.loads(results_path.read_text())['runs'] if results_path.is_file() else []
    results = [r for r in done if r['seed'] in args.seeds and r['kernel'] in args.kernels]
    total = len(args.seeds) * len(args.kernels)
    for seed in args.seeds:
        for choice in args.kernels:
            if any(r['seed'] == seed and r['kernel'] == choice for r in results):
                continue
            print(f'demo-band: run {len(results) + 1}/{total}: seed {seed}, kernel {choice} '
                  f'({time.strftime("%H:%M")})', flush=True)
            result = one_run(seed, choice, args.dir, args.keep)
            results.append(result)
            print(f'demo-band: classifier {result["classifier"]:.1f}, mean IU '
                  f'{result["fcn32s"]:.1f} / {result["fcn16s"]:.1f} / {result["fcn8s"]:.1f}, '
                  f'training {result["training_minutes"]:.1f} min', flush=True)
            write_atomically(results_path, json.dumps(
                {'cpu': report.cpu_model(), 'date': time.strftime('%Y-%m-%d'), 'runs': results},
                indent=1) + '\n')
    text = (f'{report.cpu_model()}, {time.strftime("%Y-%m-%d")}; goals: classifier >= '
            f'{GOALS["classifier"]:.0f}, mean IU >= {GOALS["fcn32s"]:.0f} / '
            f'{GOALS["fcn16s"]:.0f} / {GOALS["fcn8s"]:.0f}, training <= '
            f'{GOAL_TRAINING_MINUTES:.0f} min\n\n' + table(results))
    write_atomically(args.dir / 'band.md', text)
    print(text, end='')
    return 1 if any(misses(r) for r in results) else 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except BandError as error:
        sys.exit(f'demo-band: error: {error}')
