"""One benchmarked subject in its own process, driven by `bench.__main__` over a pipe.

`python -m bench.worker KIND CONFIG_JSON` sets the subject up, then answers one JSON
request per stdin line with one JSON reply on its stdout: {"cmd": "run"} times one
iteration, {"cmd": "dump", "path": ...} writes the arrays the frameworks are compared on,
{"cmd": "info"} reports peak memory, FLOPs and the libraries in use. A process per subject
keeps each one's peak memory its own and lets the driver alternate subjects run by run.
"""

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from bench import nets
from fcn import prototxt
from bench.flops import net_flops

from fcn.runtime import threads

# Gradients of the (few) parameter blobs of at most this many values are compared: all of
# them but fc6/fc7's weights, which would only make the dumps big.
CHECKED_GRADIENT_SIZE = 4 << 20


def rss_mb(field='VmRSS'):
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f'no {field} in /proc/self/status')


def loaded_libraries():
    """The BLAS/OpenMP libraries mapped into this process (what really runs)."""
    names = set()
    for line in Path('/proc/self/maps').read_text().splitlines():
        path = line.split()[-1]
        if any(word in path for word in ('blas', 'blis', 'mkl', 'gomp', 'iomp', 'dnnl')):
            names.add(path)
    return sorted(names)


def openblas_threads():
    """Thread count and kernel of each OpenBLAS in the process, via its own API."""
    import ctypes
    found = {}
    for path in loaded_libraries():
        if 'openblas' not in path:
            continue
        lib = ctypes.CDLL(path)
        for prefix in ('', 'scipy_'):
            try:
                get_threads = getattr(lib, f'{prefix}openblas_get_num_threads')
                corename = getattr(lib, f'{prefix}openblas_get_corename')
            except AttributeError:
                continue
            corename.restype = ctypes.c_char_p
            found[path] = {'threads': get_threads(), 'core': corename().decode()}
    return found


# Variables that steer the BLAS, OpenMP and oneDNN libraries (or which of them load).
LIBRARY_VARIABLE_PREFIXES = ('OMP_', 'GOMP_', 'KMP_', 'MKL_', 'OPENBLAS_', 'GOTO', 'BLIS_',
                             'DNNL_', 'ONEDNN_', 'LD_LIBRARY_PATH', 'LD_PRELOAD', 'FCN_BLAS',
                             'FCN_ADAPT_THREADS')


def library_variables():
    """This process's variables that steer its numerical libraries: what it really ran with."""
    return {name: value for name, value in sorted(os.environ.items())
            if name.startswith(LIBRARY_VARIABLE_PREFIXES)}


def checked_keys(net, weights, phase):
    """Learned parameter blobs whose gradients the training check compares."""
    keys = []
    for layer in net.layer:
        if not nets.in_phase(layer, phase):
            continue
        index = 0
        while f'{layer.name}/{index}' in weights:
            key = f'{layer.name}/{index}'
            if nets.param_mults(layer, index)[0] > 0 and weights[key].size <= CHECKED_GRADIENT_SIZE:
                keys.append(key)
            index += 1
    return keys


def save_npz(path, arrays):
    tmp = f'{path}.tmp.npz'
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


class Subject:
    """What every subject shares: the config, the inputs, the weights file."""

    def __init__(self, config):
        self.config = config
        self.inputs = dict(np.load(config['inputs']))

    def weights(self):
        return np.load(self.config['weights'])

    def info(self):
        return {'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                'libraries': loaded_libraries(), 'openblas': openblas_threads(),
                'env': library_variables()}


def layer_seconds(net, passes, backward):
    """Mean seconds of each layer's forward and (with `backward`) backward over `passes`
    passes of `net`, in net order: two lists, the second zeros without `backward`."""
    count = len(net._layer_names)
    forward_s, backward_s = [0.0] * count, [0.0] * count
    for _ in range(passes):
        for index in range(count):
            started = time.perf_counter()
            net._forward(index, index)
            forward_s[index] += time.perf_counter() - started
        if not backward:
            continue
        for index in reversed(range(count)):
            started = time.perf_counter()
            net._backward(index, index)
            backward_s[index] += time.perf_counter() - started
    return [t / passes for t in forward_s], [t / passes for t in backward_s]


class CaffeSubject(Subject):
    def __init__(self, config):
        super().__init__(config)
        import caffe
        self.caffe = caffe
        caffe.set_mode_cpu()

    def load(self, net):
        weights = self.weights()
        for name, blobs in net.params.items():
            for index, blob in enumerate(blobs):
                blob.data[...] = weights[f'{name}/{index}']

    def feed(self, net):
        for name in net.inputs:
            net.blobs[name].reshape(*self.inputs[name].shape)
        net.reshape()
        for name in net.inputs:
            net.blobs[name].data[...] = self.inputs[name]

    def shapes(self, net):
        return {name: tuple(blob.data.shape) for name, blob in net.blobs.items()}

    def info(self):
        import caffe
        info = super().info()
        info['caffe'] = str(Path(caffe.__file__).parent)
        record = next((parent / 'build-info.json' for parent in Path(caffe.__file__).parents
                       if (parent / 'build-info.json').exists()), None)
        if record:
            build = json.loads(record.read_text())
            info['caffe_build'] = {'key': build['key'], 'flags': build['flags']}
        return info


class CaffeForward(CaffeSubject):
    """The deploy net's forward pass; creates the shared random weights."""

    def __init__(self, config):
        super().__init__(config)
        self.definition = prototxt.read_net(config['deploy'])
        self.net = self.caffe.Net(config['deploy'], self.caffe.TEST)
        self.feed(self.net)
        if not Path(config['weights']).exists():
            shapes = {f'{name}/{i}': blob.data.shape
                      for name, blobs in self.net.params.items() for i, blob in enumerate(blobs)}
            save_npz(config['weights'], nets.random_weights(shapes, config['seed']))
        self.load(self.net)

    def run(self):
        self.net.forward()

    def dump(self, path):
        self.net.forward()
        save_npz(path, {name: self.net.blobs[name].data for name in self.net.outputs})

    def layers(self, passes):
        """Mean seconds of each layer's forward over `passes` passes, with its FLOPs, in
        net order."""
        flops = {name: forward for name, forward, _ in
                 net_flops(self.definition, self.shapes(self.net), self.caffe.TEST)}
        seconds, _ = layer_seconds(self.net, passes, backward=False)
        return [{'layer': name, 'seconds': seconds[index], 'flops': flops.get(name, 0)}
                for index, name in enumerate(self.net._layer_names)]

    def info(self):
        info = super().info()
        info['flops'] = sum(row[1] for row in
                            net_flops(self.definition, self.shapes(self.net), self.caffe.TEST))
        info['outputs'] = {name: self.net.blobs[name].data.shape for name in self.net.outputs}
        return info


class CaffeTrain(CaffeSubject):
    """Solver iterations (forward, backward, update) of the input-fed training net: one,
    or the config's `iterations`, stepped one at a time with the thread count fitted
    between them as the trainer does (fcn/runtime/threads.py; a no-op under
    FCN_ADAPT_THREADS=0). Each run starts like a new training, at the libraries' own thread
    count."""

    def __init__(self, config):
        super().__init__(config)
        self.definition = prototxt.read_net(config['train'])
        solver = nets.solver_for(prototxt.read_solver(config['solver']), config['train'])
        solver_path = Path(config['scratch']) / 'solver.prototxt'
        prototxt.write_text_proto(solver_path, solver)
        self.solver = self.caffe.get_solver(str(solver_path))
        self.feed(self.solver.net)
        self.load(self.solver.net)
        self.fewer = 0

    def run(self):
        threads.restart()
        self.fewer = 0
        for _ in range(self.config.get('iterations', 1)):
            count = threads.adapt()
            if count is not None and count < threads.share().most:
                self.fewer += 1
            self.solver.step(1)

    def fewer_threads(self):
        """Iterations of the last run that ran on fewer threads than the libraries' own."""
        return self.fewer

    def layers(self, passes):
        """Mean seconds of each layer's forward and backward over `passes` passes of the
        training net, with their FLOPs, in net order (the update is not included)."""
        net = self.solver.net
        flops = {name: (forward, backward) for name, forward, backward in
                 net_flops(self.definition, self.shapes(net), self.caffe.TRAIN)}
        forward, backward = layer_seconds(net, passes, backward=True)
        rows = []
        for index, name in enumerate(net._layer_names):
            forward_flops, backward_flops = flops.get(name, (0, 0))
            rows.append({'layer': name, 'forward_s': forward[index],
                         'backward_s': backward[index], 'forward_flops': forward_flops,
                         'backward_flops': backward_flops})
        return rows

    def info(self):
        info = super().info()
        info['flops'] = sum(forward + backward for _, forward, backward in
                            net_flops(self.definition, self.shapes(self.solver.net),
                                      self.caffe.TRAIN))
        return info


class CaffeCheck(CaffeSubject):
    """Loss, scores and gradients of the training net with dropout off (TEST phase)."""

    def __init__(self, config):
        super().__init__(config)
        self.definition = prototxt.read_net(config['train'])
        self.net = self.caffe.Net(config['train'], self.caffe.TEST)
        self.feed(self.net)
        self.load(self.net)

    def dump(self, path):
        self.net.forward()
        self.net.backward()
        arrays = {f'blob:{name}': self.net.blobs[name].data
                  for name in (*self.net.outputs, *self.config['compare'])}
        for key in checked_keys(self.definition, self.weights(), self.caffe.TEST):
            name, index = key.split('/')
            arrays[f'grad:{key}'] = self.net.params[name][int(index)].diff
        save_npz(path, arrays)


class TorchSubject(Subject):
    def __init__(self, config):
        super().__init__(config)
        import torch
        self.torch = torch
        if config.get('threads'):
            torch.set_num_threads(config['threads'])
        self.tensors = {name: torch.from_numpy(array) for name, array in self.inputs.items()}

    def module(self, path, phase):
        from bench.torchnet import CaffeNet
        definition = prototxt.read_net(path)
        return definition, CaffeNet(definition, self.weights(), phase)

    def info(self):
        info = super().info()
        info['torch'] = {'version': self.torch.__version__,
                         'threads': self.torch.get_num_threads(),
                         'mkldnn': self.torch.backends.mkldnn.is_available()}
        return info


class TorchForward(TorchSubject):
    """The deploy net's forward pass in inference mode, in the config's `torch_form` (one of
    bench.torchnet.FORMS)."""

    def __init__(self, config):
        super().__init__(config)
        from bench.torchnet import Inference
        pb = prototxt.caffe_pb2()
        self.definition, net = self.module(config['deploy'], pb.TEST)
        self.outputs = [top for layer in self.definition.layer for top in layer.top
                        if not any(top in other.bottom for other in self.definition.layer)]
        self.form = config['torch_form']
        self.net = Inference(net, self.form, self.outputs)
        if self.form == 'compiled':
            # torch.compile compiles on the first call: here, so that a compiler that fails
            # shows at set-up, and neither the check nor the warm-up run is the compiling.
            self.forward()

    def forward(self):
        with self.torch.inference_mode():
            return self.net({'data': self.tensors['data']})

    def run(self):
        self.forward()

    def dump(self, path):
        blobs = self.forward()
        save_npz(path, {name: blobs[name].numpy() for name in self.outputs})

    def info(self):
        info = super().info()
        info['torch']['form'] = self.form
        return info


class TorchTrain(TorchSubject):
    def __init__(self, config):
        super().__init__(config)
        pb = prototxt.caffe_pb2()
        solver = prototxt.read_solver(config['solver'])
        self.definition, self.net = self.module(config['train'], pb.TRAIN)
        self.optimizer = self.torch.optim.SGD(self.net.param_groups(solver), lr=solver.base_lr,
                                              momentum=solver.momentum)

    def run(self):
        self.optimizer.zero_grad()
        self.net.losses(self.net(self.tensors)).backward()
        self.optimizer.step()


class TorchCheck(TorchSubject):
    def __init__(self, config):
        super().__init__(config)
        pb = prototxt.caffe_pb2()
        self.phase = pb.TEST
        self.definition, self.net = self.module(config['train'], self.phase)

    def dump(self, path):
        blobs = self.net(self.tensors)
        loss = self.net.losses(blobs)
        loss.backward()
        outputs = [layer.top[0] for layer in self.net.layers if layer.type == 'SoftmaxWithLoss']
        arrays = {f'blob:{name}': blobs[name].detach().numpy()
                  for name in (*outputs, *self.config['compare'])}
        for key in checked_keys(self.definition, self.weights(), self.phase):
            arrays[f'grad:{key}'] = self.net.params[key].grad.numpy()
        save_npz(path, arrays)


class Sgemm(Subject):
    """numpy's float32 GEMM of two square matrices: the machine's practical GEMM limit."""

    def __init__(self, config):
        super().__init__(config)
        rng = np.random.default_rng(0)
        self.size = config['sgemm_size']
        self.a, self.b = (rng.standard_normal((self.size, self.size), dtype=np.float32)
                          for _ in range(2))

    def run(self):
        np.matmul(self.a, self.b)

    def info(self):
        info = super().info()
        info['flops'] = 2 * self.size ** 3
        info['numpy'] = np.__version__
        return info


class DataLayer(CaffeSubject):
    """The project's VOC data layer reading a fixture set of VOC-sized JPEG + PNG pairs."""

    def __init__(self, config):
        super().__init__(config)
        from bench.dataload import data_layer_net
        self.net = self.caffe.Net(str(data_layer_net(Path(config['scratch']), config)),
                                  self.caffe.TRAIN)

    def run(self):
        self.net.forward()


KINDS = {
    'caffe-forward': CaffeForward, 'caffe-train': CaffeTrain, 'caffe-check': CaffeCheck,
    'torch-forward': TorchForward, 'torch-train': TorchTrain, 'torch-check': TorchCheck,
    'sgemm': Sgemm, 'data': DataLayer,
}


def serve(subject, requests, replies):
    for line in requests:
        request = json.loads(line)
        command = request.pop('cmd')
        try:
            if command == 'run':
                started = time.perf_counter()
                subject.run()
                reply = {'seconds': time.perf_counter() - started}
            else:
                reply = {'result': getattr(subject, command)(**request)}
        except Exception:
            reply = {'error': traceback.format_exc()}
        replies.write(json.dumps(reply) + '\n')
        replies.flush()


def main(argv=None):
    kind, config = (argv or sys.argv[1:])
    # Replies go to the original stdout; anything a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(1), 'w')
    os.dup2(2, 1)
    try:
        # The framework's own import is part of the baseline, not of the subject's memory.
        # Caffe's subjects run on the BLAS the tools choose (caffe_env.py, loaded first).
        framework = ('torch' if kind.startswith('torch') else 'caffe' if kind != 'sgemm'
                     else 'numpy')
        if framework == 'caffe':
            from fcn.runtime import caffe_env  # noqa: F401
        __import__(framework)
        baseline_mb = rss_mb()
        subject = KINDS[kind](json.loads(config))
    except Exception:
        replies.write(json.dumps({'error': traceback.format_exc()}) + '\n')
        return 1
    replies.write(json.dumps({'ready': True, 'baseline_mb': baseline_mb}) + '\n')
    replies.flush()
    serve(subject, sys.stdin, replies)
    return 0


if __name__ == '__main__':
    sys.exit(main())
