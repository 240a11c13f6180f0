"""Benchmark Caffe's CPU path against PyTorch on an FCN, with random weights.

Both frameworks get the same weights and input, and must agree before any time is taken:
outputs and loss to a relative difference of 1e-4, training gradients to 1e-2 in norm
(see relative_difference).
Each subject runs in its own process, so peak memory is its own; runs alternate
(Caffe, PyTorch, SGEMM, Caffe, ...) so that load from elsewhere hits all alike, and the
figures are medians. PyTorch's forward pass runs in several forms (--torch-forms; from the
layer-by-layer interpreter to torch.compile, bench/torchnet.py), each checked against Caffe
and timed in the same rounds: Caffe is compared with the fastest. The contention part
trains a toy FCN alone and beside one busy process, with the project's thread settings
and with the libraries' defaults (bench/contention.py). Writes runs/bench/results.json
and prints a table.

Caffe runs on the BLAS the project's tools choose for this CPU (solve/caffe_env.py: MKL on
Intel CPUs, Debian's OpenBLAS elsewhere; FCN_BLAS=mkl or FCN_BLAS=default chooses), in
every part; --blas and --blas-dir time others against it.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench import blas, contention, nets, report
from fcn import prototxt
from fcn.errors import run_command

# The environment as the benchmark was started, before caffe_env sets Caffe's (its BLAS
# choice: MKL's folder on LD_LIBRARY_PATH, MKL's threading layer): what PyTorch runs in.
STARTED_ENV = dict(os.environ)
from fcn.runtime import caffe_env, threads

# What caffe_env set or changed, for Caffe's processes only.
CAFFE_ENV_SET = {name: value for name, value in os.environ.items()
                 if STARTED_ENV.get(name) != value}

TOLERANCE = 1e-4
GRADIENT_TOLERANCE = 1e-2
DEFAULT_OUT = nets.REPO / 'runs' / 'bench' / 'results.json'
SEED = 1337
# The demo's last stage: a small net whose every layer is a short parallel region, which is
# where threads that wait for each other cost the most.
CONTENTION_MODEL_DIR = nets.REPO / 'models' / 'toy-fcn8s'
# libgomp's variables for how a waiting thread waits; the defaults subject has none.
WAIT_VARIABLES = ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')
# What the project's tools do: fit the thread count to the free cores (fcn/runtime/threads.py).
PROJECT_THREAD_SETTINGS = {threads.SWITCH: '1'}
# The forms of PyTorch's forward pass (bench/torchnet.py FORMS; named here so that the
# driver need not import PyTorch), in the order they run in each round. The fastest is
# the baseline Caffe is compared with; 'layers' is the interpreter with every blob kept.
TORCH_FORMS = ('channels_last', 'compiled', 'plain', 'layers')


def say(message):
    print(f'bench: {message}', file=sys.stderr, flush=True)


class Worker:
    """A `bench.worker` process and its request/reply pipe."""

    def __init__(self, kind, config, env, label=None):
        self.kind = kind
        self.label = label or kind
        if kind.startswith('torch'):
            env = torch_env(env)  # PyTorch as its users run it
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'bench.worker', kind, json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env, cwd=nets.REPO)
        self.relay = threading.Thread(target=relay_once, args=(self.process.stderr, self.label),
                                      daemon=True)
        self.relay.start()
        self.baseline_mb = self._reply()['baseline_mb']

    def _reply(self):
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            self.relay.join()
            raise SystemExit(f'bench: the {self.kind} worker died (exit {code}); '
                             'its error is above')
        reply = json.loads(line)
        if 'error' in reply:
            self.close()
            raise SystemExit(f'bench: the {self.kind} worker failed:\n{reply["error"]}')
        return reply

    def request(self, cmd, **args):
        self.process.stdin.write(json.dumps({'cmd': cmd, **args}) + '\n')
        self.process.stdin.flush()
        return self._reply()

    def run(self):
        return self.request('run')['seconds']

    def info(self):
        info = self.request('info')['result']
        info['baseline_mb'] = self.baseline_mb
        return info

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()
        self.relay.join()


def relay_once(stream, label):
    """Pass a worker's messages on to stderr, each distinct line once: OpenBLAS's pthread
    builds warn on every call from inside one of Caffe's OpenMP loops, thousands a run."""
    seen = {}
    for line in stream:
        seen[line] = seen.get(line, 0) + 1
        if seen[line] == 1:
            sys.stderr.write(line)
            sys.stderr.flush()
    repeated = sum(seen.values()) - len(seen)
    if repeated:
        say(f'{label}: {repeated} repeated lines of its output not shown')


def relative_difference(name, a, b):
    """How far Caffe's array `a` and PyTorch's `b` differ, relative to `a`'s scale.

    Outputs: the largest difference over the largest value. Gradients: the norms of the
    difference and of `a`, because a few ReLU inputs within rounding of zero fall on
    different sides in the two frameworks and route some gradient differently (seen: one
    of fc6's 786k units at 3.6e-7), which moves single entries of the lower layers'
    gradients by about 1e-3 while the whole stays within 1e-3.
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    if name.startswith('grad:'):
        scale, difference = np.linalg.norm(a), np.linalg.norm(a - b)
    else:
        scale, difference = np.abs(a).max(), np.abs(a - b).max()
    return float(difference / scale) if scale else float(difference)


def tolerance(name):
    return GRADIENT_TOLERANCE if name.startswith('grad:') else TOLERANCE


def relative_differences(reference_path, other_path):
    """relative_difference of each array two dumps share; their names must match."""
    with np.load(reference_path) as reference, np.load(other_path) as other:
        if sorted(reference.files) != sorted(other.files):
            raise SystemExit(f'bench: the frameworks dumped different arrays: '
                             f'{sorted(reference.files)} vs {sorted(other.files)}')
        differences = {}
        for name in reference.files:
            if reference[name].shape != other[name].shape:
                raise SystemExit(f'bench: {name} has shape {reference[name].shape} in Caffe, '
                                 f'{other[name].shape} in PyTorch')
            differences[name] = relative_difference(name, reference[name], other[name])
    return differences


def check(name, caffe, torch, scratch):
    paths = [scratch / f'{name}-{worker.kind}.npz' for worker in (caffe, torch)]
    for worker, path in zip((caffe, torch), paths):
        worker.request('dump', path=str(path))
    differences = relative_differences(*paths)
    for path in paths:
        path.unlink()
    worst = max(differences, key=lambda key: differences[key] / tolerance(key))
    say(f'check {name}: largest relative difference for its tolerance '
        f'{differences[worst]:.1e} ({worst})')
    if differences[worst] > tolerance(worst):
        raise SystemExit(f'bench: Caffe and PyTorch disagree on {worst} of the {name} '
                         f'check: relative difference {differences[worst]:.2e} > '
                         f'{tolerance(worst):.0e}; no time is reported')
    return differences


# A pause before each timed run: the subject before it leaves threads spinning for a while
# after its last call (numpy's OpenBLAS about 0.1 s, libgomp less), which took a core from
# whatever ran next. On the toy FCN (a 0.05 s training iteration) the subject that followed
# the SGEMM runs took 0.15 s without the pause, the same library 0.05-0.07 s elsewhere.
SETTLE_SECONDS = 0.3


def alternate(workers, rounds, loads, progress=True):
    """Seconds of `rounds` runs of each worker, taken in turn after one warm-up run each."""
    for worker in workers:
        worker.run()
    samples = {worker.label: [] for worker in workers}
    for index in range(rounds):
        for worker in workers:
            time.sleep(SETTLE_SECONDS)
            samples[worker.label].append(worker.run())
        loads.append(os.getloadavg()[0])
        if progress:
            say(f'round {index + 1}/{rounds}: ' + ', '.join(
                f'{kind} {seconds[-1]:.3f} s' for kind, seconds in samples.items()))
    return samples


def finish(workers, samples):
    """Close the workers of one part, keeping their samples, process figures and the FLOPs
    that the first (Caffe's) counted."""
    infos = {}
    for worker in workers:
        infos[worker.label] = worker.info()
        worker.close()
    return {'samples': samples, 'flops': infos[workers[0].label]['flops'], 'infos': infos}


def compared(part, sgemm_flops):
    """Medians, GFLOP/s, memory and the Caffe/PyTorch ratio of a finished part.

    Where PyTorch ran in several forms (workers labelled torch@FORM), each form's figures
    and Caffe's ratio to it are under 'torch_forms', and 'torch' is the fastest form (by
    median): the baseline, whose name is its 'form'."""
    figures = {'sgemm': report.summarize(part['samples']['sgemm'], sgemm_flops)}
    limit = (part['samples']['sgemm'], sgemm_flops)
    forms = {}
    for label, info in part['infos'].items():
        summary = report.summarize(part['samples'][label], part['flops'], limit)
        summary.update(peak_mb=round(info['peak_mb']), baseline_mb=round(info['baseline_mb']))
        summary['process'] = {key: info[key] for key in
                              ('libraries', 'openblas', 'torch', 'caffe', 'caffe_build',
                               'env') if key in info}
        if label.startswith('torch@'):
            forms[label.split('@', 1)[1]] = summary
        else:
            figures[label.split('-')[0]] = summary
    if forms:
        for summary in forms.values():
            summary['ratio'] = report.ratio(figures['caffe']['samples_s'], summary['samples_s'])
        baseline = min(forms, key=lambda form: forms[form]['median_s'])
        figures['torch'] = dict(forms[baseline], form=baseline)
        figures['torch_forms'] = forms
    figures['ratio'] = report.ratio(figures['caffe']['samples_s'],
                                    figures['torch']['samples_s'])
    return figures


def busiest_processes(count=6):
    """The processes using the most CPU now (what else was running), as ps prints them."""
    result = subprocess.run(['ps', '-eo', 'pcpu,etime,args', '--sort=-pcpu'],
                            capture_output=True, text=True)
    return [line[:160] for line in result.stdout.splitlines()[1:count + 1]]


def machine():
    return {'cpu': report.cpu_model(), 'cores': os.cpu_count(), 'system': platform.platform(),
            'python': platform.python_version(), 'caffe_blas': caffe_env.BLAS[0],
            'blas_env': {key: value for key, value in os.environ.items()
                         if key.startswith(('OPENBLAS', 'OMP_', 'MKL_', 'GOMP', 'BLIS',
                                            'FCN_BLAS'))}}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='python -m bench', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model-dir', type=Path, default=nets.DEFAULT_MODEL_DIR,
                        help='generated model folder with deploy/train/solver.prototxt '
                             '(default: %(default)s)')
    parser.add_argument('--size', default='500x375', metavar='WxH',
                        help='input width x height (default: %(default)s, a typical VOC image)')
    parser.add_argument('--rounds', type=int, default=5,
                        help='timed runs of each subject, alternating (default: %(default)s)')
    parser.add_argument('--threads', type=int,
                        help='threads for BLAS, OpenMP and PyTorch (default: their own)')
    parser.add_argument('--parts', nargs='+', choices=('forward', 'train', 'data', 'contention'),
                        default=['forward', 'train', 'data', 'contention'],
                        help='what to measure')
    parser.add_argument('--layers', action='store_true',
                        help="also time each of Caffe's layers: forward in the forward "
                             'part, forward and backward of the training net in the train part')
    parser.add_argument('--data-images', type=int, default=20,
                        help='fixture images the data layer reads (default: %(default)s)')
    parser.add_argument('--sgemm-size', type=int, default=4096, metavar='N',
                        help='side of the square matrices of the SGEMM limit '
                             '(default: %(default)s)')
    parser.add_argument('--contention-model-dir', type=Path, default=CONTENTION_MODEL_DIR,
                        help='the net trained alone and beside a busy process '
                             '(default: %(default)s)')
    parser.add_argument('--contention-size', default='128x128', metavar='WxH',
                        help='its input size (default: %(default)s, the toy set\'s)')
    parser.add_argument('--contention-iterations', type=int, default=200, metavar='N',
                        help='solver iterations per timed run (default: %(default)s)')
    parser.add_argument('--thread-env', action='append', default=[], metavar='NAME=VALUE',
                        help="try another thread setting in place of the project's "
                             '(FCN_ADAPT_THREADS=1, fcn/runtime/threads.py) in the contention '
                             'part, e.g. GOMP_SPINCOUNT=1000 (repeatable)')
    parser.add_argument('--blas-dir', action='append', default=[], metavar='NAME=DIR',
                        help="also time Caffe's forward and training with another BLAS "
                             'under the same binary: DIR holds a libopenblas.so.0 (a link to '
                             'that library; a libcaffe.so.1.0.0 beside it swaps in another '
                             'Caffe build) and is searched first; its outputs are checked '
                             'against PyTorch like the chosen BLAS\'s (repeatable)')
    parser.add_argument('--blas', action='append', default=[], metavar='NAME',
                        choices=[*blas.CANDIDATES, 'all'],
                        help='like --blas-dir, for a candidate bench/blas.py makes ready '
                             '(fetched or installed on first use): '
                             f'{", ".join(blas.CANDIDATES)}, or all (repeatable)')
    parser.add_argument('--torch-forms', nargs='+', choices=TORCH_FORMS, default=TORCH_FORMS,
                        metavar='FORM',
                        help="PyTorch's forward pass in these forms, each checked against "
                             'Caffe and timed in the same rounds; the fastest is the baseline '
                             f'(default: {" ".join(TORCH_FORMS)}; bench/torchnet.py says what '
                             'each is)')
    parser.add_argument('--out', type=Path, default=DEFAULT_OUT,
                        help='results file (default: %(default)s)')
    args = parser.parse_args(argv)
    args.width, args.height = parse_size(parser, '--size', args.size)
    args.contention_size = parse_size(parser, '--contention-size', args.contention_size)
    for option in ('thread_env', 'blas_dir'):
        try:
            setattr(args, option, dict(item.split('=', 1) for item in getattr(args, option)))
        except ValueError:
            parser.error(f'--{option.replace("_", "-")} {getattr(args, option)}: expected '
                         'NAME=VALUE, e.g. GOMP_SPINCOUNT=10000 or blis=/tmp/blis')
    # Each compared BLAS: its folder and the variables it needs.
    args.blas_dir = {name: (folder, {}) for name, folder in args.blas_dir.items()}
    for name in (blas.CANDIDATES if 'all' in args.blas else args.blas):
        try:
            args.blas_dir[name] = (blas.prepare(name), blas.CANDIDATES[name].env)
        except blas.BlasError as error:
            parser.error(f'--blas {name}: {error}')
    return args


def parse_size(parser, option, text):
    try:
        width, height = (int(side) for side in text.lower().split('x'))
    except ValueError:
        parser.error(f'{option} {text!r}: expected WIDTHxHEIGHT, e.g. 500x375')
    return width, height


def main(argv=None):
    args = parse_args(argv)
    files = nets.model_files(args.model_dir)
    # os.environ holds Caffe's environment (caffe_env, imported above).
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(filter(None, [str(nets.REPO),
                                                       os.environ.get('PYTHONPATH')])))
    if args.threads:
        for key in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
            env[key] = str(args.threads)
    if 'forward' in args.parts or 'train' in args.parts:
        import importlib.util
        if importlib.util.find_spec('torch') is None:
            raise SystemExit('bench: PyTorch is not installed: `make bench` installs it '
                             '(pip install torch==2.13.0, a CPU build) into the virtualenv')
    results = {'model': args.model_dir.name, 'width': args.width, 'height': args.height,
               'rounds': args.rounds, 'threads': args.threads,
               'tolerance': {'outputs': TOLERANCE, 'gradients': GRADIENT_TOLERANCE},
               'command': ' '.join(['python -m bench', *(argv or sys.argv[1:])]),
               'started': time.strftime('%Y-%m-%d %H:%M:%S'), 'machine': machine(),
               'load': {'start': os.getloadavg(), 'rounds': [],
                        'busiest_at_start': busiest_processes()}, 'checks': {}}
    with tempfile.TemporaryDirectory(prefix='bench-') as scratch:
        scratch = Path(scratch)
        inputs = scratch / 'inputs.npz'
        np.savez(inputs, data=nets.random_image(args.width, args.height, SEED))
        train = scratch / 'train.prototxt'
        prototxt.write_text_proto(train, nets.input_fed(prototxt.read_net(files['train']), {
            'data': (1, 3, args.height, args.width), 'label': (1, 1, args.height, args.width)}))
        config = {'deploy': str(files['deploy']), 'train': str(train),
                  'solver': str(files['solver']), 'inputs': str(inputs),
                  'weights': str(scratch / 'weights.npz'), 'seed': SEED,
                  'threads': args.threads, 'scratch': str(scratch), 'compare': [],
                  'sgemm_size': args.sgemm_size}
        measure(args, config, env, scratch, results)
    results['load']['end'] = os.getloadavg()
    results['load']['busiest_at_end'] = busiest_processes()
    report.write_json(args.out, results)
    print(report.table(results))
    if 'blas' in results:
        print(report.blas_table(results['blas']))
    if 'contention' in results:
        print(report.contention_table(results['contention']))
    if 'layers' in results:
        print(report.layer_table(results['layers']['rows'], results['layers']['sgemm_gflops']))
    if 'train_layers' in results:
        print(report.train_layer_table(**results['train_layers']))
    say(f'wrote {args.out}')


def measure(args, config, env, scratch, results):
    if 'forward' in args.parts or 'train' in args.parts:
        measure_frameworks(args, config, env, scratch, results)
    if 'data' in args.parts:
        results['data'] = measure_data(args, config, env, results.get('train'))
    if 'contention' in args.parts:
        results['contention'] = measure_contention(args, env, scratch, results)


def measure_frameworks(args, config, env, scratch, results):
    """Check the frameworks agree, then time them and the SGEMM limit in alternation."""
    loads = results['load']['rounds']
    sgemm = Worker('sgemm', config, env)
    finished = {}
    # The Caffe forward worker writes the random weights every other subject loads.
    caffe = Worker('caffe-forward', config, env)
    # Without the forward part, one form is enough for the check.
    torches = torch_form_workers(args.torch_forms if 'forward' in args.parts
                                 else args.torch_forms[:1], config, env, results)
    torch = torches[0]
    results['checks']['forward'] = check('forward', caffe, torch, scratch)
    for other in torches[1:]:
        name = f"forward@{other.label.split('@', 1)[1]}"
        results['checks'][name] = check(name, caffe, other, scratch)
    config['compare'] = sorted(results['checks']['forward'])
    # The training label takes the classes of the net's (first) score output.
    classes = caffe.info()['outputs'][config['compare'][0]][1]
    with np.load(config['inputs']) as inputs:
        image = inputs['data']
    np.savez(config['inputs'], data=image,
             label=nets.random_label(args.width, args.height, classes, SEED))
    # Other BLAS libraries (or Caffe libraries) under the same binding, checked like it.
    variants = variant_workers('caffe-forward', args, config, env)
    for variant in variants:
        results['checks'][variant.label] = check(variant.label, variant, torch, scratch)
    blas = {}
    if 'forward' in args.parts:
        say('timing forward passes')
        finished['forward'] = time_part('forward', caffe, torches, variants, sgemm, args,
                                        loads, blas, results)
    else:
        for worker in (caffe, *variants, *torches):
            worker.close()
    if 'train' in args.parts:
        checkers = [Worker(kind, config, env) for kind in ('caffe-check', 'torch-check')]
        results['checks']['train'] = check('train', *checkers, scratch)
        for worker in checkers:
            worker.close()
        caffe, torch = (Worker(kind, config, env) for kind in ('caffe-train', 'torch-train'))
        say('timing training iterations')
        finished['train'] = time_part('train', caffe, [torch],
                                      variant_workers('caffe-train', args, config, env),
                                      sgemm, args, loads, blas, results)
    sgemm_info = sgemm.info()
    sgemm.close()
    results['sgemm'] = {'size': args.sgemm_size, 'openblas': sgemm_info['openblas']}
    for name, part in finished.items():
        results[name] = compared(part, sgemm_info['flops'])
    if args.blas_dir:
        results['blas'] = compared_blas(blas, finished, sgemm_info['flops'], results)


def torch_form_workers(forms, config, env, results):
    """A torch-forward worker for each of `forms`, labelled torch@FORM. A form whose worker
    cannot be set up (torch.compile without a working C++ compiler, say) is left out, and
    why is kept in results['torch_forms_unavailable']; at least one must be set up."""
    workers = []
    for form in forms:
        try:
            workers.append(Worker('torch-forward', dict(config, torch_form=form), env,
                                  label=f'torch@{form}'))
        except SystemExit as error:
            say(f'PyTorch form {form} left out: {error}')
            reason = str(error).strip().splitlines()[-1]
            results.setdefault('torch_forms_unavailable', {})[form] = reason
    if not workers:
        raise SystemExit(f'bench: none of the PyTorch forms {", ".join(forms)} could be set up')
    return workers


def variant_workers(kind, args, config, env):
    """A `kind` worker for each --blas-dir, labelled caffe@NAME."""
    try:
        return [Worker(kind, config, blas.library_env(env, folder, extra), label=f'caffe@{name}')
                for name, (folder, extra) in args.blas_dir.items()]
    except blas.BlasError as error:
        raise SystemExit(f'bench: --blas-dir {error}') from None


# Where --layers puts each part's table in the results, and how many passes it averages.
LAYER_RESULTS = {'forward': ('layers', 1), 'train': ('train_layers', 3)}


def time_part(part, caffe, torches, variants, sgemm, args, loads, blas, results):
    """Time one part ('forward' or 'train'): Caffe, the --blas-dir variants (closed after,
    their samples into blas[part]), PyTorch (each of its forms) and the SGEMM limit in
    alternation; with --layers, Caffe's layers too. Returns the part's samples and process
    figures."""
    samples = alternate([caffe, *variants, *torches, sgemm], args.rounds, loads)
    blas[part] = {variant.label: (samples.pop(variant.label), variant.info())
                  for variant in variants}
    for variant in variants:
        variant.close()
    if args.layers:
        # Per-layer times come from more passes, so their limit is taken around them.
        key, passes = LAYER_RESULTS[part]
        before = sgemm.run()
        rows = caffe.request('layers', passes=passes)['result']
        limit = 2 * sgemm.info()['flops'] / (before + sgemm.run()) / report.GIGA
        results[key] = {'rows': rows, 'sgemm_gflops': round(limit, 1), 'passes': passes}
    return finish([caffe, *torches], samples)


def compared_blas(blas, finished, sgemm_flops, results):
    """Each other BLAS's figures in each part timed ('forward', 'train'), with its ratios to
    PyTorch's baseline (results[part]['torch']) and to the default Caffe (medians of each
    round's ratio): {name: {part: ...}}."""
    figures = {}
    for part, runs in blas.items():
        samples = finished[part]['samples']
        for label, (times, info) in runs.items():
            summary = report.summarize(times, finished[part]['flops'],
                                       (samples['sgemm'], sgemm_flops))
            summary.update(peak_mb=round(info['peak_mb']), libraries=info['libraries'],
                           openblas=info['openblas'],
                           ratio_to_torch=report.ratio(times,
                                                       results[part]['torch']['samples_s']),
                           ratio_to_default=report.ratio(times, samples[f'caffe-{part}']))
            figures.setdefault(label.split('@', 1)[1], {})[part] = summary
    return figures


def measure_data(args, config, env, train):
    """Median seconds for the project's VOC data layer to deliver one image and label."""
    config = dict(config, images=args.data_images, width=args.width, height=args.height)
    try:
        worker = Worker('data', config, env)
    except SystemExit as error:
        say(f'data layer not measured: {error}')
        return {'unavailable': str(error).strip().splitlines()[-1]}
    say(f'timing the data layer over {2 * args.data_images} images')
    samples = alternate([worker], 2 * args.data_images, [], progress=False)['data']
    worker.close()
    figures = report.summarize(samples)
    figures['images_per_s'] = round(1 / figures['median_s'], 1)
    if train:
        figures['of_train_iteration'] = round(
            figures['median_s'] / train['caffe']['median_s'], 4)
    return figures


def torch_env(env, started=None, caffe_set=None):
    """`env` for a PyTorch worker: the libraries' defaults (library_defaults), and none of
    what caffe_env set for Caffe (`caffe_set`, by default CAFFE_ENV_SET): each such
    variable back to its value when the benchmark started (`started`, STARTED_ENV), or
    gone. PyTorch's own MKL is linked in and ignores MKL's library-choosing variables, but
    nothing meant for Caffe's libraries should reach the baseline's process."""
    started = STARTED_ENV if started is None else started
    caffe_set = CAFFE_ENV_SET if caffe_set is None else caffe_set
    plain = dict(env)
    for name, value in caffe_set.items():
        if plain.get(name) != value:
            continue
        if name in started:
            plain[name] = started[name]
        else:
            del plain[name]
    return library_defaults(plain)


def library_defaults(env):
    """`env` without any setting of how threads wait and with the thread count left
    alone (fcn/runtime/threads.py off): the libraries' own behaviour."""
    plain = {name: value for name, value in env.items() if name not in WAIT_VARIABLES}
    return {**plain, threads.SWITCH: '0'}


def thread_envs(env, overrides):
    """The environments of the contention part's two subjects, the project's thread settings
    (or `overrides` in their place) and the libraries' defaults; and those settings."""
    settings = overrides or PROJECT_THREAD_SETTINGS
    defaults = library_defaults(env)
    return {'project': {**defaults, **settings}, 'defaults': defaults}, settings


def measure_contention(args, env, scratch, results):
    """A toy FCN's training alone and beside a busy process, with and without the project's
    thread settings, alternating (bench/contention.py)."""
    files = nets.model_files(args.contention_model_dir)
    width, height = args.contention_size
    folder = scratch / 'contention'
    folder.mkdir()
    inputs, train = folder / 'inputs.npz', folder / 'train.prototxt'
    prototxt.write_text_proto(train, nets.input_fed(prototxt.read_net(files['train']), {
        'data': (1, 3, height, width), 'label': (1, 1, height, width)}))
    config = {'deploy': str(files['deploy']), 'train': str(train),
              'solver': str(files['solver']), 'inputs': str(inputs),
              'weights': str(folder / 'weights.npz'), 'seed': SEED, 'scratch': str(folder),
              'iterations': args.contention_iterations}
    image = nets.random_image(width, height, SEED)
    np.savez(inputs, data=image)
    envs, settings = thread_envs(env, args.thread_env)
    # The forward worker writes the random weights and tells the class count.
    forward = Worker('caffe-forward', config, envs['project'])
    classes = next(iter(forward.info()['outputs'].values()))[1]
    forward.close()
    np.savez(inputs, data=image, label=nets.random_label(width, height, classes, SEED))
    say(f'timing {args.contention_model_dir.name} training alone and beside a busy process '
        f'({args.contention_iterations} iterations a run), project settings {settings} '
        'against the libraries\' defaults')
    workers = {label: Worker('caffe-train', config, envs[label]) for label in envs}
    try:
        samples = contention.alternate_with_busy(workers, args.rounds,
                                                 results['load']['rounds'], say)
    finally:
        for worker in workers.values():
            worker.close()
    return {'model': args.contention_model_dir.name, 'width': width, 'height': height,
            'iterations': args.contention_iterations, 'settings': settings,
            'busy_process': [sys.executable, '-c', contention.BUSY_LOOP],
            'figures': contention.summarize(samples, 'defaults')}


if __name__ == '__main__':
    run_command(main)
