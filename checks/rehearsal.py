#!/usr/bin/env python3
"""A full-size rehearsal of the real pipelines on the CPU (`make rehearsal`).

  rehearsal.py [MODEL ...] [--steps N] [--val-images N] [--dir DIR] [--keep]

For each FCN of the model table (all 16 unless models are named) it runs the make target
users run, `make MODEL STEPS=N VAL_IMAGES=N`, with only the iteration and image counts
cut:
- the datasets are prepared by `make data-<dataset>` from made-up archives of a few dozen
  images at the real sizes, in the real formats and layouts (data/fixtures.py), served by
  an HTTP server on 127.0.0.1 inside this process as the mirror (FCN_DATA_MIRROR) and
  verified against the checksums this rehearsal declares for them (FCN_CHECKSUMS);
- the ILSVRC classifiers are random VGG16, CaffeNet and GoogLeNet of the real shapes,
  layer names and file format, served and verified the same way, fetched by make and
  carried into base weights by the same surgery rules;
- every stage of each chain trains N iterations, is validated on the first N val images,
  snapshots, and the model is scored.
Models run in table order, so a later stage reuses the earlier stages a previous line
trained. Everything lives in the rehearsal folder (default runs/rehearsal): data/,
weights/ (base weights), classifiers/, runs/, logs/<model>.log, summary.json; the
archives and classifiers are made once (served/) and reused while their recipe is
unchanged. Each rehearsal starts afresh unless --keep.

One line per model: the stages make ran, seconds, peak memory (the largest process
make started), mean IU, and the load average. The first failing model stops the
rehearsal with the last lines of its log and exit status 1.
"""
import argparse
import hashlib
import inspect
import json
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from checks import fixtures
from data.fetch import digests
from data.prepare import DATASETS
from data.weights import CLASSIFIERS
from fcn import runs
from fcn.errors import run_command
from fcn.paths import REPO
from models.specs import MODELS

# The 16 FCNs of the table: every model on a real dataset.
REHEARSED = [name for name, spec in MODELS.items() if spec.dataset in DATASETS]

# The ILSVRC classifiers (models/weights.py) whose files hold Caffe's V1 layers (`layers`,
# blobs with num, channels, height, width), as the 2014 VGG16 and CaffeNet files do.
# Whether BVLC GoogLeNet's does is not known: it is written in the current format, so that
# both are rehearsed.
V1_CLASSIFIERS = ('vgg16', 'caffenet')

DATASET_SIZES = {'voc': fixtures.PASCAL_SIZES, 'pascalcontext': fixtures.PASCAL_SIZES,
                 'nyud': fixtures.NYUD_SIZE, 'siftflow': fixtures.SIFTFLOW_SIZE}
SIFTFLOW_UNANNOTATED = ('highway_bost181', 'street_urb506')  # as in the real set
CHECKSUM_LIST = 'served.sha256'


def say(message):
    print(message, flush=True)


def fixture_ids():
    """A few dozen images a dataset, with the real sets' naming and split structure:
    seg11valid is VOC2011 seg val minus SBD train; NYUD trainval is train + val; two SIFT
    Flow training images have no annotation."""
    voc_val = ['2008_{:06d}'.format(i) for i in range(1, 13)]
    sift_categories = ('coast', 'forest', 'highway', 'insidecity', 'mountain', 'opencountry',
                       'street', 'tallbuilding')
    sift = ['{}_rehearsal{}'.format(category, i) for i in range(4) for category in sift_categories]
    return {
        'voc': {'train': ['2007_{:06d}'.format(i) for i in range(1, 7)], 'val': voc_val},
        'sbd': {'train': voc_val[8:] + ['2009_{:06d}'.format(i) for i in range(1, 21)],
                'val': ['2010_{:06d}'.format(i) for i in range(1, 7)]},
        'nyud': {'train': [str(5000 + i) for i in range(1, 9)],
                 'val': [str(5100 + i) for i in range(1, 9)],
                 'test': [str(5200 + i) for i in range(1, 9)]},
        'siftflow': {'test': sift[:8], 'trainval': sift[8:] + list(SIFTFLOW_UNANNOTATED)},
        'context': {'train': ['2008_{:06d}'.format(i) for i in range(101, 113)],
                    'val': ['2008_{:06d}'.format(i) for i in range(201, 213)]},
    }


# ---- stand-in classifiers ------------------------------------------------------------

def random_weights(net, rng):
    """He-scaled normal weights, small biases: activations keep their size through depth."""
    for blobs in net.params.values():
        weights = blobs[0].data
        fan_in = max(1, int(np.prod(weights.shape[1:])))
        weights[...] = rng.standard_normal(weights.shape, dtype=np.float32) \
            * np.float32(math.sqrt(2 / fan_in))
        for bias in blobs[1:]:
            bias.data[...] = rng.normal(0, 0.1, bias.data.shape)


def random_net_file(deploy, out, seed):
    """Random weights for a net's deploy definition, its upsampling bilinear as training
    leaves it (fixed), saved as Caffe saves a net."""
    from fcn import nets, surgery
    net = nets.load_net(deploy, net_param=surgery.single_image_net(deploy))
    random_weights(net, np.random.default_rng(seed))
    surgery.interp(net)
    out.parent.mkdir(parents=True, exist_ok=True)
    net.save(str(out))
    return out


# V1 layer types (caffe.proto's V1LayerParameter.LayerType) of the classifiers' layers.
V1_TYPES = {'Convolution': 'CONVOLUTION', 'ReLU': 'RELU', 'Pooling': 'POOLING',
            'InnerProduct': 'INNER_PRODUCT', 'Dropout': 'DROPOUT', 'Softmax': 'SOFTMAX',
            'LRN': 'LRN', 'Concat': 'CONCAT'}
V1_PARAMS = ('convolution_param', 'pooling_param', 'inner_product_param', 'dropout_param',
             'lrn_param', 'concat_param')


def to_v1(path):
    """Rewrite a caffemodel in Caffe's V1 format, as the 2014 ILSVRC files are: a `layers`
    entry per layer (no Input layer: V1 nets declared inputs as fields), every blob with the
    4-D num/channels/height/width of the day (an inner product's weights 1x1xNxK, a bias
    1x1x1xN) instead of a shape. Caffe upgrades such files when it reads them."""
    from caffe.proto import caffe_pb2
    current = caffe_pb2.NetParameter()
    current.ParseFromString(Path(path).read_bytes())
    legacy = caffe_pb2.NetParameter(name=current.name)
    for layer in current.layer:
        if layer.type == 'Input':
            continue
        entry = legacy.layers.add(name=layer.name, bottom=layer.bottom, top=layer.top,
                                  type=caffe_pb2.V1LayerParameter.LayerType.Value(
                                      V1_TYPES[layer.type]))
        for field in V1_PARAMS:
            if layer.HasField(field):
                getattr(entry, field).CopyFrom(getattr(layer, field))
        for blob in layer.blobs:
            dims = (1,) * (4 - len(blob.shape.dim)) + tuple(blob.shape.dim)
            copy = entry.blobs.add()
            copy.CopyFrom(blob)
            copy.ClearField('shape')
            copy.num, copy.channels, copy.height, copy.width = dims
    del current
    Path(path).write_bytes(legacy.SerializeToString())


def make_classifier(net, folder):
    """A random classifier `net` (vgg16, caffenet, googlenet) under its published file name."""
    deploy = REPO / 'models' / net / 'deploy.prototxt'
    out = Path(folder) / CLASSIFIERS[net].filename
    started = time.monotonic()
    random_net_file(deploy, out, seed=len(net))
    if net in V1_CLASSIFIERS:
        to_v1(out)
    say('  {}: random {} weights, {} format, {:.0f} MB, {:.0f} s'.format(
        out.name, net, 'V1' if net in V1_CLASSIFIERS else 'current', out.stat().st_size / 1e6,
        time.monotonic() - started))
    return out


# ---- what is served ------------------------------------------------------------------

def recipe_key(ids):
    """Changes whenever the made-up files would: the fixture code, ids, sizes, and the
    classifiers' definitions, weights and format."""
    digest = hashlib.sha256()
    digest.update((REPO / 'data' / 'fixtures.py').read_bytes())
    digest.update(json.dumps([ids, SIFTFLOW_UNANNOTATED], sort_keys=True).encode())
    for net, source in sorted(CLASSIFIERS.items()):
        digest.update('{} {} {}'.format(net, source.filename, net in V1_CLASSIFIERS).encode())
        digest.update((REPO / 'models' / net / 'deploy.prototxt').read_bytes())
    for function in (random_weights, random_net_file, to_v1, make_classifier):
        digest.update(inspect.getsource(function).encode())
    return digest.hexdigest()[:16]


def make_served(folder):
    """The dataset archives and the classifiers in folder/served (made once per recipe),
    and folder/served.sha256, the checksums this rehearsal declares for them."""
    served, stamp = folder / 'served', folder / 'served' / '.recipe'
    ids = fixture_ids()
    key = recipe_key(ids)
    if stamp.is_file() and stamp.read_text() == key:
        say('archives and classifiers: made earlier, in {}'.format(served))
        return
    if served.exists():
        shutil.rmtree(served)
    stage = folder / 'fixture-stage'
    shutil.rmtree(stage, ignore_errors=True)
    started = time.monotonic()
    say('making the dataset archives (real sizes) in {} ...'.format(served))
    fixtures.write_archives(served, stage, ids, size=DATASET_SIZES,
                            unannotated=SIFTFLOW_UNANNOTATED)
    shutil.rmtree(stage)
    say('  {:.0f} s; making the random ILSVRC classifiers ...'.format(time.monotonic() - started))
    for net in CLASSIFIERS:
        make_classifier(net, served)
    write_checksum_list(served, folder / CHECKSUM_LIST)
    stamp.write_text(key)


def in_child(function, *args):
    """Run function(*args) in a forked process; True if it succeeded. Making the
    classifiers takes gigabytes: in this process, that peak would be inherited by every
    make it starts (Linux carries a process's peak resident set across fork and exec),
    and reported as theirs."""
    child = multiprocessing.get_context('fork').Process(target=function, args=args)
    child.start()
    child.join()
    return child.exitcode == 0


def write_checksum_list(served, path):
    """Declare the served files' checksums, as sha256sum prints them."""
    Path(path).write_text(''.join('{}  {}\n'.format(digests(file)['sha256'], file.name)
                                  for file in sorted(Path(served).iterdir())
                                  if not file.name.startswith('.')))


# ---- running make ----------------------------------------------------------------------

# What make ran, from the commands it echoes: (pattern, stage name).
STAGE_COMMANDS = (
    (re.compile(r'-m data\.prepare --weights \S*?([^/\s]+)\.caffemodel'), 'fetch {}'),
    (re.compile(r'-m data\.prepare (\w+)'), 'data-{}'),
    (re.compile(r'solve/surgery\.py to-fcn --classifier models/(\w+)/'), 'surgery {}'),
    (re.compile(r'solve/solve\.py (\S+)'), 'train {}'),
    (re.compile(r'solve/score\.py (\S+)'), 'score {}'),
)


def stage_of(line):
    for pattern, name in STAGE_COMMANDS:
        match = pattern.search(line)
        if match:
            return name.format(match.group(1))
    return None


def make_command(model, folder, steps, val_images):
    return ['make', '--no-print-directory', model, 'STEPS={}'.format(steps),
            'VAL_IMAGES={}'.format(val_images), 'VENV={}'.format(sys.prefix),
            'RUNS={}'.format(folder / 'runs'), 'BASE_WEIGHTS={}'.format(folder / 'weights'),
            'CLASSIFIER_DIR={}'.format(folder / 'classifiers')]


def make_environment(folder, server_url):
    """The user's environment, with the rehearsal's data root, mirror and checksums, and
    none of the user's data overrides or make flags (an outer make's variables)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith('FCN_URL_') and key not in (
               'FCN_ARCHIVES', 'MAKEFLAGS', 'MFLAGS', 'MAKELEVEL', 'FCN_RUNS_DIR',
               'FCN_WEIGHTS_DIR')}
    env.update(FCN_DATA_DIR=str(folder / 'data'), FCN_DATA_MIRROR=server_url,
               FCN_CHECKSUMS=str(folder / CHECKSUM_LIST))
    return env


def process_tree(root):
    """The pids of root and every process below it, from /proc."""
    children = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            parent = int(stat.read_text().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def peak_rss(pid):
    """A live process's peak resident set so far (VmHWM), in bytes; 0 once it ended."""
    try:
        status = Path('/proc/{}/status'.format(pid)).read_text()
    except OSError:
        return 0
    match = re.search(r'^VmHWM:\s+(\d+) kB', status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


class StagePeaks(threading.Thread):
    """Samples the peak memory of every process under make each second and charges it
    to the stage running then: make runs one command at a time."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.stage, self.peaks = pid, None, {}
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(1.0):
            stage = self.stage
            if stage is not None:
                peak = max(peak_rss(pid) for pid in process_tree(self.pid))
                self.peaks[stage] = max(self.peaks.get(stage, 0), peak)


def run_make(command, env, log_path, echo):
    """Run make, its output into the log and through `echo`. Returns (exit status, seconds,
    peak resident set in bytes of the largest process, [(stage, seconds, peak bytes)])."""
    started = time.monotonic()
    stages = []
    with open(log_path, 'w') as log:
        log.write('$ {}\n'.format(' '.join(command)))
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        sampler = StagePeaks(process.pid)
        sampler.start()
        for raw in process.stdout:  # lines end at '\n' only: progress lines start with '\r'
            line = raw.decode(errors='replace').lstrip('\r')
            log.write(line)
            log.flush()
            echo(line.rstrip('\n'))
            stage = stage_of(line)
            if stage:
                stages.append((stage, time.monotonic()))
                sampler.stage = len(stages) - 1
        # wait4 reports the largest resident set of the process and all it waited for.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        sampler.done.set()
        sampler.join()
    ended = time.monotonic()
    timed = [(stage, (stages[i + 1][1] if i + 1 < len(stages) else ended) - start,
              sampler.peaks.get(i, 0)) for i, (stage, start) in enumerate(stages)]
    return process.returncode, ended - started, usage.ru_maxrss * 1024, timed


def mean_ius(score_path):
    """{head label: mean IU} from a score.json (one head: {'': mean IU})."""
    document = json.loads(Path(score_path).read_text())
    if 'mean_iu' in document:
        return {'': document['mean_iu']}
    return {label: head['mean_iu'] for label, head in document.items()
            if isinstance(head, dict) and 'mean_iu' in head}


def summary_line(record):
    ius = '  '.join('{}{}'.format(label + ' ' if label else '',
                                  'n/a' if iu is None else '{:.1f}%'.format(100 * iu))
                    for label, iu in record['mean_iu'].items())
    stages = ', '.join('{} {:.0f} s {:.1f} GiB'.format(stage, seconds, peak / 2 ** 30)
                       for stage, seconds, peak in record['stages'])
    return '{:24} ok {:6.0f} s  peak {:5.2f} GiB  mean IU {}  load {:.1f}  stages: {}'.format(
        record['model'], record['seconds'], record['peak_bytes'] / 2 ** 30, ius,
        record['load'], stages or 'none (up to date)')


def rehearse(models, folder, steps, val_images, keep=False):
    """Rehearse `models` in table order; returns the exit status."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if not keep:
        for name in ('data', 'weights', 'classifiers', 'runs', 'logs'):
            shutil.rmtree(folder / name, ignore_errors=True)
    (folder / 'logs').mkdir(exist_ok=True)
    if not in_child(make_served, folder):
        say('REHEARSAL FAILED: the archives and classifiers could not be made (above)')
        return 1
    served = folder / 'served'
    records = []
    with fixtures.FileServer(served) as server:
        env = make_environment(folder, server.url)
        say('serving {} at {}; STEPS={} VAL_IMAGES={}'.format(served, server.url, steps,
                                                              val_images))
        for number, model in enumerate(models, 1):
            command = make_command(model, folder, steps, val_images)
            log_path = folder / 'logs' / '{}.log'.format(model)
            say('[{}/{}] {}: {} (log: {})'.format(number, len(models), model, ' '.join(command),
                                                  log_path))
            status, seconds, peak, stages = run_make(
                command, env, log_path, lambda line: say('    ' + line))
            score = runs.run_folder(model, folder / 'runs').score()
            if status != 0 or not score.is_file():
                tail = log_path.read_text().splitlines()[-30:]
                killed = any(re.search(r'\bKilled\b|Error 137', line) for line in tail)
                say('\n'.join(['', 'REHEARSAL FAILED at {} after {:.0f} s: {}{}; the end of {}:'
                               .format(model, seconds, 'make exited with status {}'.format(status)
                                       if status else '{} was not written'.format(score),
                                       ' (a process was killed: out of memory? see dmesg)'
                                       if killed else '', log_path)]
                              + ['  ' + line for line in tail]))
                write_summary(folder, records, steps, val_images, failed=model)
                return 1
            records.append({'model': model, 'seconds': seconds, 'peak_bytes': peak,
                            'mean_iu': mean_ius(score), 'load': os.getloadavg()[0],
                            'stages': stages})
            say(summary_line(records[-1]))
    disk = disk_use(folder / name for name in ('data', 'classifiers', 'weights', 'runs'))
    say('\nrehearsal passed: {} models, {:.0f} s; {:.1f} GiB written to {}'.format(
        len(records), sum(record['seconds'] for record in records), disk / 2 ** 30, folder))
    for record in records:
        say(summary_line(record))
    write_summary(folder, records, steps, val_images, disk=disk)
    return 0


def disk_use(folders):
    """Bytes in the files under the folders, a file with several names once."""
    seen = {}
    for folder in folders:
        for path in Path(folder).rglob('*'):
            if path.is_file() and not path.is_symlink():
                status = path.stat()
                seen[status.st_dev, status.st_ino] = status.st_size
    return sum(seen.values())


def write_summary(folder, records, steps, val_images, failed=None, disk=None):
    document = {'steps': steps, 'val_images': val_images, 'failed': failed,
                'date': time.strftime('%Y-%m-%d %H:%M:%S %z'), 'cpus': os.cpu_count(),
                'disk_bytes': disk, 'models': records}
    partial = folder / 'summary.json.partial'
    partial.write_text(json.dumps(document, indent=1) + '\n')
    os.replace(partial, folder / 'summary.json')


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*', metavar='MODEL',
                        help='models to rehearse, with the stages they start from (default: '
                             'all {})'.format(len(REHEARSED)))
    parser.add_argument('--steps', type=int, default=1, metavar='N',
                        help='training iterations of every stage (default 1)')
    parser.add_argument('--val-images', type=int, default=2, metavar='N',
                        help='val images each stage is validated and scored on (default 2)')
    parser.add_argument('--dir', type=Path, default=REPO / 'runs' / 'rehearsal',
                        help='the rehearsal folder (default runs/rehearsal)')
    parser.add_argument('--keep', action='store_true',
                        help="continue the previous rehearsal: keep its data and runs (make "
                             "then redoes only what is missing)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.models if name not in REHEARSED]
    if unknown:
        parser.error('{} is not an FCN of the table; choose from: {}'.format(
            unknown[0], ', '.join(REHEARSED)))
    if args.steps < 1 or args.val_images < 1:
        parser.error('--steps and --val-images must be at least 1')
    models = [name for name in REHEARSED if name in args.models] if args.models else REHEARSED
    return rehearse(models, args.dir, args.steps, args.val_images, args.keep)


if __name__ == '__main__':
    run_command(main)
