"""The forward pass of FCN-8s on Caffe, OpenCV's DNN module and ONNX Runtime (`make
bench-runtimes`, also run by `make bench`), on the CPU, with random weights.

  python -m bench.runtimes [--rounds N] [--size HxW] [--out FILE]

VGG16 FCN-8s (models/voc-fcn8s/deploy.prototxt) gets random weights of the real shapes,
saved as a caffemodel (what Caffe and OpenCV read) and exported by the project's converter
(what ONNX Runtime runs). Each runtime runs in its own process, so that its peak memory
(the process's largest resident size: libraries, weights and the forward pass's blobs)
is its own; all get the same input of the given size (default 500x375, a PASCAL photo)
and must agree with Caffe (1e-4 of the score range, 99.99% of the argmax) before any time
is reported. Runs alternate between the runtimes, one warm-up each, so that load from
elsewhere hits all alike; the figures are medians. Writes runs/bench/runtimes.json and
prints a table with each runtime's time relative to Caffe's.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import report
from fcn.errors import UsageError, run_command
from fcn.paths import REPO

MODEL = 'voc-fcn8s'
RUNTIMES = ('caffe', 'opencv', 'onnxruntime')
DEFAULT_OUT = REPO / 'runs' / 'bench' / 'runtimes.json'
MAX_RELATIVE, MIN_AGREEMENT = 1e-4, 0.9999


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(folder, size, seed=1337):
    """Random weights of MODEL's deploy net (caffemodel and ONNX) and one input, in
    folder. Run in a process of its own: the net it builds is not kept while timing."""
    from fcn.runtime import caffe_env  # noqa: F401  (before caffe)
    import caffe
    from checks.runtimes import randomize
    from fcn import onnx_export
    from fcn.prototxt import read_net
    caffe.set_mode_cpu()
    prototxt = REPO / 'models' / MODEL / 'deploy.prototxt'
    net = caffe.Net(str(prototxt), caffe.TEST)
    rng = np.random.default_rng(seed)
    randomize(net, rng)
    net.save(str(folder / 'weights.caffemodel'))
    onnx_export.save(onnx_export.to_onnx(read_net(prototxt), onnx_export.net_params(net),
                                         MODEL), folder / 'model.onnx')
    np.save(folder / 'input.npy', rng.normal(0, 60, (1, 3, *size)).astype(np.float32))


def load(runtime, folder):
    from fcn import runtimes
    prototxt = REPO / 'models' / MODEL / 'deploy.prototxt'
    if runtime == 'caffe':
        from fcn import nets
        return runtimes.CaffeRuntime(nets.load_net(prototxt, folder / 'weights.caffemodel'))
    if runtime == 'opencv':
        return runtimes.OpenCVRuntime(prototxt, folder / 'weights.caffemodel')
    return runtimes.OnnxRuntime(folder / 'model.onnx')


def serve(runtime, folder):
    """A worker: load the runtime, then answer `run` (one forward pass: its seconds) and
    `done` (the scores saved, the peak memory) on standard input and output."""
    folder = Path(folder)
    if runtime == 'caffe':
        from fcn.runtime import caffe_env  # noqa: F401  (before caffe)
        import caffe
        caffe.set_mode_cpu()
    engine = load(runtime, folder)
    inputs = {'data': np.load(folder / 'input.npy')}
    scores = None
    for line in sys.stdin:
        if line.strip() == 'run':
            engine.adapt()  # as infer.py does before each image (Caffe's thread count)
            start = time.perf_counter()
            scores = engine.forward(inputs)['score']
            reply = {'seconds': time.perf_counter() - start}
        else:
            np.save(folder / f'score-{runtime}.npy', scores)
            reply = {'peak_mb': peak_mb()}
        print(json.dumps(reply), flush=True)


class Worker:
    def __init__(self, runtime, folder):
        self.runtime = runtime
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'bench.runtimes', '--worker', runtime, str(folder)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)

    def ask(self, command):
        self.process.stdin.write(command + '\n')
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise UsageError(f'the {self.runtime} worker ended (exit {self.process.wait()}); '
                             f'its error is above')
        return json.loads(line)

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def parse_size(text):
    try:
        height, width = (int(n) for n in text.split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: give HxW, e.g. 375x500') from None
    return height, width


def versions():
    import cv2
    import onnxruntime
    return {'opencv': cv2.__version__, 'onnxruntime': onnxruntime.__version__}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rounds', type=int, default=5, help='timed runs of each (default 5)')
    parser.add_argument('--size', type=parse_size, default=(375, 500),
                        help='input height x width (default 375x500)')
    parser.add_argument('--out', type=Path, default=DEFAULT_OUT)
    parser.add_argument('--worker', nargs=2, metavar=('RUNTIME', 'DIR'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return serve(*args.worker)
    if args.rounds < 1:
        parser.error('--rounds must be at least 1')
    with tempfile.TemporaryDirectory(prefix='fcn-bench-runtimes-') as scratch:
        folder = Path(scratch)
        subprocess.run([sys.executable, '-c', 'import sys; from pathlib import Path; '
                        'from bench.runtimes import prepare; '
                        'prepare(Path(sys.argv[1]), (int(sys.argv[2]), int(sys.argv[3])))',
                        str(folder), *map(str, args.size)], check=True, cwd=REPO)
        workers = [Worker(runtime, folder) for runtime in RUNTIMES]
        samples = {runtime: [] for runtime in RUNTIMES}
        try:
            for worker in workers:
                worker.ask('run')
            for index in range(args.rounds):
                for worker in workers:
                    time.sleep(0.3)  # the last runtime's threads stop spinning
                    samples[worker.runtime].append(worker.ask('run')['seconds'])
                print(f'bench: round {index + 1}/{args.rounds}: ' + ', '.join(
                    f'{r} {s[-1]:.2f} s' for r, s in samples.items()), file=sys.stderr,
                    flush=True)
            peaks = {worker.runtime: worker.ask('done')['peak_mb'] for worker in workers}
        finally:
            for worker in workers:
                worker.close()
        reference = np.load(folder / 'score-caffe.npy')
        spread = float(reference.max() - reference.min()) or 1.0
        agreement = {}
        for runtime in RUNTIMES[1:]:
            scores = np.load(folder / f'score-{runtime}.npy')
            agreement[runtime] = {
                'relative': float(np.abs(scores - reference).max()) / spread,
                'argmax': float((scores.argmax(1) == reference.argmax(1)).mean())}
            if agreement[runtime]['relative'] > MAX_RELATIVE or \
                    agreement[runtime]['argmax'] < MIN_AGREEMENT:
                raise UsageError(f'{runtime} disagrees with Caffe ({agreement[runtime]}); '
                                 f'no time is reported')
    medians = {runtime: statistics.median(s) for runtime, s in samples.items()}
    result = {'model': MODEL, 'size': list(args.size), 'rounds': args.rounds,
              'cpu': report.cpu_model(), 'cores': os.cpu_count(), 'load_average': os.getloadavg()[0],
              'date': time.strftime('%Y-%m-%d'), 'versions': versions(),
              'runtimes': {runtime: {'median_s': medians[runtime], 'samples_s': samples[runtime],
                                     'peak_mb': round(peaks[runtime]),
                                     'vs_caffe': medians[runtime] / medians['caffe'],
                                     **({'agreement': agreement[runtime]}
                                        if runtime in agreement else {})}
                           for runtime in RUNTIMES}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f'{MODEL} forward, {args.size[0]}x{args.size[1]}, {result["cpu"]} '
          f'({result["cores"]} cores), {result["date"]}, median of {args.rounds}:')
    print(f'  {"runtime":12s} {"seconds":>8s} {"vs Caffe":>9s} {"peak MB":>8s}')
    for runtime, figures in result['runtimes'].items():
        print(f'  {runtime:12s} {figures["median_s"]:8.3f} {figures["vs_caffe"]:8.2f}x '
              f'{figures["peak_mb"]:8d}')
    print(f'results: {args.out}')


if __name__ == '__main__':
    run_command(main)
