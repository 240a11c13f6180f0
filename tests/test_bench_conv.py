"""Caffe's CPU (de)convolutions against a direct numpy computation, and bit-for-bit the same
whatever the number of OpenMP threads; max pooling, ReLU and Adam's update against their
formulas: what the performance patches (caffe-build/patches, BENCHMARKS.md) must keep true.
"""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import caffe
from caffe import layers as L, params as P

# (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation, group): FCN's 3x3 and
# pad-100 convolutions, fc6's 7x7, 1x1 scores, strided and dilated and grouped variants.
GEOMETRIES = [
    (3, 3, 1, 1, 1, 1, 1, 1),
    (3, 3, 1, 1, 9, 9, 1, 1),
    (7, 7, 1, 1, 0, 0, 1, 1),
    (1, 1, 1, 1, 0, 0, 1, 1),
    (4, 4, 2, 2, 1, 1, 1, 1),
    (2, 3, 2, 1, 0, 2, 1, 1),
    (3, 3, 1, 1, 2, 2, 2, 1),
    (3, 3, 2, 2, 1, 1, 1, 2),
]
# FCN's upsampling (kernel 2f, stride f, no padding) and the strided/dilated/grouped cases.
DECONV_GEOMETRIES = [
    (4, 4, 2, 2, 0, 0, 1, 1),
    (16, 16, 8, 8, 0, 0, 1, 1),
    (3, 3, 1, 1, 1, 1, 1, 1),
] + GEOMETRIES[5:]
CHANNELS, OUTPUTS, HEIGHT, WIDTH = 4, 6, 13, 17


def conv_net(path, kind, geometry, channels=CHANNELS, height=HEIGHT, width=WIDTH, batch=2):
    kh, kw, sh, sw, ph, pw, dilation, group = geometry
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[batch, channels, height, width]))
    n.out = getattr(L, kind)(n.data, convolution_param=dict(
        num_output=OUTPUTS, kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, pad_h=ph,
        pad_w=pw, dilation=dilation, group=group))
    proto = n.to_proto()
    proto.force_backward = True
    path.write_text(str(proto))
    return caffe.Net(str(path), caffe.TEST)


def windows(shape, geometry, out_shape):
    """For each kernel tap: the slices of the padded input that it reads."""
    kh, kw, sh, sw, ph, pw, dilation, _ = geometry
    for y in range(kh):
        for x in range(kw):
            rows = slice(y * dilation, y * dilation + sh * (out_shape[2] - 1) + 1, sh)
            cols = slice(x * dilation, x * dilation + sw * (out_shape[3] - 1) + 1, sw)
            yield y, x, (slice(None), slice(None), rows, cols)


def conv_reference(x, w, b, dy, geometry, out_shape):
    """Forward output and input/weight gradients of a convolution, in float64."""
    _, _, _, _, ph, pw, _, group = geometry
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros(out_shape) + b[None, :, None, None]
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    cin, cout = x.shape[1] // group, out_shape[1] // group
    for ky, kx, window in windows(xp.shape, geometry, out_shape):
        for g in range(group):
            ins, outs = slice(g * cin, (g + 1) * cin), slice(g * cout, (g + 1) * cout)
            patch = xp[window][:, ins]
            y[:, outs] += np.einsum('oc,nchw->nohw', w[outs, :, ky, kx], patch)
            dw[outs, :, ky, kx] += np.einsum('nohw,nchw->oc', dy[:, outs], patch)
            grad = np.einsum('oc,nohw->nchw', w[outs, :, ky, kx], dy[:, outs])
            dxp[(slice(None), ins) + window[2:]] += grad
    return y, dxp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]], dw


def run_layer(net, rng):
    arrays = {'x': rng.standard_normal(net.blobs['data'].data.shape)}
    net.blobs['data'].data[...] = arrays['x']
    for blob in net.params['out']:
        blob.data[...] = rng.standard_normal(blob.data.shape)
    net.forward()
    arrays['dy'] = rng.standard_normal(net.blobs['out'].data.shape)
    net.blobs['out'].diff[...] = arrays['dy']
    net.backward()
    return arrays


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def assert_convolution_matches_reference(net, geometry, seed):
    """Forward, input gradient and weight gradient of the net's layer against conv_reference."""
    arrays = run_layer(net, np.random.default_rng(seed))
    weight, bias = (blob.data.astype(np.float64) for blob in net.params['out'])
    y, dx, dw = conv_reference(arrays['x'], weight, bias, arrays['dy'], geometry,
                               net.blobs['out'].data.shape)
    assert_close(net.blobs['out'].data, y)
    assert_close(net.blobs['data'].diff, dx)
    assert_close(net.params['out'][0].diff, dw)


@pytest.mark.parametrize('geometry', GEOMETRIES)
def test_convolution_matches_direct_computation(tmp_path, geometry):
    net = conv_net(tmp_path / 'conv.prototxt', 'Convolution', geometry)
    assert_convolution_matches_reference(net, geometry, seed=0)


def assert_deconvolution_matches_reference(net, geometry, seed):
    """A deconvolution is the convolution run backwards: for the convolution from the
    deconvolution's output shape to its input shape, with the same weights, the
    deconvolution's output is that convolution's input gradient (given the deconvolution's
    input as output gradient), its input gradient is that convolution's output (of the
    deconvolution's output gradient), and its weight gradient that convolution's."""
    arrays = run_layer(net, np.random.default_rng(seed))
    weight, bias = (blob.data.astype(np.float64) for blob in net.params['out'])
    zero_bias = np.zeros(arrays['x'].shape[1])
    _, y, _ = conv_reference(np.zeros(arrays['dy'].shape), weight, zero_bias, arrays['x'],
                             geometry, arrays['x'].shape)
    dx, _, dw = conv_reference(arrays['dy'], weight, zero_bias, arrays['x'], geometry,
                               arrays['x'].shape)
    assert_close(net.blobs['out'].data, y + bias[None, :, None, None])
    assert_close(net.blobs['data'].diff, dx)
    assert_close(net.params['out'][0].diff, dw)


@pytest.mark.parametrize('geometry', DECONV_GEOMETRIES)
def test_deconvolution_matches_direct_computation(tmp_path, geometry):
    net = conv_net(tmp_path / 'deconv.prototxt', 'Deconvolution', geometry)
    assert_deconvolution_matches_reference(net, geometry, seed=1)


@pytest.mark.parametrize('geometry', [GEOMETRIES[0], GEOMETRIES[-1]])
def test_convolution_of_a_larger_image_matches_direct_computation(tmp_path, geometry):
    # 16 channels of 160 x 100: column buffers of millions of values, as in FCN's layers.
    net = conv_net(tmp_path / 'big.prototxt', 'Convolution', geometry, channels=16,
                   height=160, width=100)
    assert_convolution_matches_reference(net, geometry, seed=2)


# Tall images take the tiled paths (cpu-tiled-forward.patch, cpu-tiled-gradients.patch)
# with tiles of full size: at 1200 x 100, 16 channels and a 3x3 kernel, a tile of 2^20
# column values holds 72 output rows, so the layer has 17 tiles (the grouped, strided
# geometry: 5), and the weights are far below a quarter of a tile. The deconvolution (6
# outputs) has 7 tiles of 194 rows. Smaller layers are cut into 4 smaller tiles of at least
# 256 output pixels where they can be (cpu-tiles-small-layers.patch): MEDIUM's layers (80 or
# 40 output rows of 44 to 52 pixels) into 4 or 5, every geometry but the 1x1; the 13 x 17
# images above run untiled, as in Caffe. Batches of at least 4 images too small to tile
# run their images in parallel instead (cpu-whole-images.patch): IMAGES, 37 images of
# 9 x 11, whatever the geometry (the deconvolutions' outputs are larger, their inputs not),
# more images than the weight gradient's 32 runs, so that runs hold one or two images.
TALL = dict(channels=16, height=1200, width=100)
MEDIUM = dict(channels=16, height=80, width=50)
IMAGES = dict(channels=16, height=9, width=11, batch=37)


@pytest.fixture
def two_threads():
    """Caffe on two threads whatever the machine's cores, then back to its default."""
    from fcn.runtime import threads
    set_threads = threads.ThreadSetter()
    set_threads(2)
    yield
    set_threads(threads.default_threads())


def parallel_cases(tall_geometries, geometries):
    """(size, geometry) pairs: full tiles on TALL, smaller tiles on MEDIUM, images in
    parallel on IMAGES."""
    return ([pytest.param(TALL, g, id=f'tall-{i}') for i, g in enumerate(tall_geometries)] +
            [pytest.param(size, g, id=f'{name}-{i}') for name, size in
             [('medium', MEDIUM), ('images', IMAGES)] for i, g in enumerate(geometries)])


@pytest.mark.parametrize('size, geometry',
                         parallel_cases([GEOMETRIES[0], GEOMETRIES[-1]], GEOMETRIES))
def test_parallel_convolution_matches_direct_computation(tmp_path, size, geometry,
                                                         two_threads):
    net = conv_net(tmp_path / 'parallel.prototxt', 'Convolution', geometry, **size)
    assert_convolution_matches_reference(net, geometry, seed=3)


@pytest.mark.parametrize('size, geometry',
                         parallel_cases([DECONV_GEOMETRIES[2], GEOMETRIES[-1]],
                                        DECONV_GEOMETRIES))
def test_parallel_deconvolution_matches_direct_computation(tmp_path, size, geometry,
                                                           two_threads):
    # The deconvolution's forward is the convolution's input gradient, its input gradient
    # the convolution's forward: every parallel path, on the deconvolution's shapes.
    net = conv_net(tmp_path / 'parallel-deconv.prototxt', 'Deconvolution', geometry, **size)
    assert_deconvolution_matches_reference(net, geometry, seed=4)


THREADED_RUN = '''
import json, sys
from pathlib import Path
import numpy as np
from test_bench_conv import conv_net, run_layer
arrays = {}
for index, geometry in enumerate(json.loads(sys.argv[1])):
    net = conv_net(Path(sys.argv[2]) / f'{index}.prototxt', sys.argv[5], geometry,
                   **json.loads(sys.argv[4]))
    run_layer(net, np.random.default_rng(index))
    arrays[f'{index}:y'] = net.blobs['out'].data
    arrays[f'{index}:dx'] = net.blobs['data'].diff
    arrays[f'{index}:dw'] = net.params['out'][0].diff
np.savez(sys.argv[3], **arrays)
'''


def threaded_runs(tmp_path, blas_folder=None, geometries=GEOMETRIES,
                  sizes=dict(channels=16, height=40, width=50), kind='Convolution'):
    """The layers' outputs and gradients with 1 and with 2 OpenMP threads, each run in its
    own process; with `blas_folder`, that OpenBLAS build is loaded instead, on one thread."""
    script = THREADED_RUN
    dumps = []
    for threads in (1, 2):
        dump = tmp_path / f'threads{threads}.npz'
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), GLOG_minloglevel='2')
        if blas_folder:
            env.update(LD_LIBRARY_PATH=blas_folder, OPENBLAS_NUM_THREADS='1')
        subprocess.run([sys.executable, '-c', script, json.dumps(geometries), str(tmp_path),
                        str(dump), json.dumps(sizes), kind], check=True, env=env,
                       cwd=Path(__file__).parent, timeout=120)
        dumps.append(np.load(dump))
    assert len(dumps[0].files) == 3 * len(geometries)
    return dumps


def pthread_openblas():
    folders = glob.glob('/usr/lib/*/openblas-pthread')
    if not folders:
        pytest.skip("Debian's pthread OpenBLAS (libopenblas0-pthread) is not installed")
    return folders[0]


def test_im2col_and_col2im_do_not_depend_on_the_thread_count(tmp_path):
    # The OpenMP OpenBLAS that Caffe links follows OMP_NUM_THREADS, and a threaded GEMM
    # sums in another order; the pthread build, held to one thread, keeps the BLAS fixed
    # so that only Caffe's own loops change with the threads. Large enough for the
    # threaded im2col/col2im path (16 * 9 * 40 * 50 column values).
    one, two = threaded_runs(tmp_path, pthread_openblas())
    for name in one.files:
        assert np.array_equal(one[name], two[name]), name


@pytest.mark.parametrize('size', [TALL, IMAGES], ids=['tiles', 'images'])
@pytest.mark.parametrize('kind', ['Convolution', 'Deconvolution'])
def test_parallel_passes_do_not_depend_on_the_thread_count(tmp_path, kind, size):
    # Tiles are cut the same way at 1 and 2 threads (TALL tiles at both), the weight
    # gradient's partial sums (of tiles or of images) and the input gradient's order too:
    # which thread computes a tile or an image must not change a bit of any result.
    one, two = threaded_runs(tmp_path, pthread_openblas(), [GEOMETRIES[0], GEOMETRIES[-1]],
                             size, kind)
    for name in one.files:
        assert np.array_equal(one[name], two[name]), name


def test_results_with_the_default_blas_agree_across_thread_counts(tmp_path):
    one, two = threaded_runs(tmp_path)
    for name in one.files:
        np.testing.assert_allclose(two[name], one[name], rtol=0,
                                   atol=1e-6 * np.abs(one[name]).max(), err_msg=name)


def test_blas_shares_the_openmp_thread_pool():
    """Caffe's OpenMP loops and its BLAS must run in one thread pool: the pthread OpenBLAS
    beside libgomp made the toy classifier train about 5x slower on two cores
    (BENCHMARKS.md). What the process has loaded is what counts, not what was linked: the
    OpenMP OpenBLAS, or MKL on its GNU threading layer where the tools chose it
    (solve/caffe_env.py)."""
    # Imported here: the layer runs import this module where solve/ is not on the path.
    from fcn.runtime import caffe_env
    maps = open('/proc/self/maps').read().split()
    openblas = {path for path in maps if os.path.basename(path).startswith('libopenblas')}
    assert openblas, 'no OpenBLAS loaded by pycaffe'
    name, folder = caffe_env.BLAS
    if name == 'mkl':
        assert openblas == {str(folder / 'libopenblas.so.0')}, openblas
        assert os.environ['MKL_THREADING_LAYER'] == 'GNU'
        assert not any(os.path.basename(path).startswith('libiomp') for path in maps)
    else:
        assert all('openmp' in path for path in openblas), openblas
    assert any(os.path.basename(path).startswith('libgomp') for path in maps)


def max_pool_reference(x, kernel, stride, pad, out_shape):
    """Caffe's max pooling, window by window: the largest value, and the index (h * width +
    w) of its first occurrence in row-major order; -FLT_MAX and -1 for a window of NaNs."""
    height, width = x.shape[2:]
    values = np.full(out_shape, -np.finfo(np.float32).max)
    indices = np.full(out_shape, -1)
    for ph in range(out_shape[2]):
        for pw in range(out_shape[3]):
            h0, w0 = ph * stride - pad, pw * stride - pad
            h1, w1 = min(h0 + kernel, height), min(w0 + kernel, width)
            h0, w0 = max(h0, 0), max(w0, 0)
            window = x[:, :, h0:h1, w0:w1].reshape(x.shape[0], x.shape[1], -1)
            for n in range(x.shape[0]):
                for c in range(x.shape[1]):
                    flat = window[n, c]
                    if np.isnan(flat).all():
                        continue
                    first = int(np.nanargmax(flat))
                    values[n, c, ph, pw] = flat[first]
                    h, w = divmod(first, w1 - w0)
                    indices[n, c, ph, pw] = (h0 + h) * width + w0 + w
    return values, indices


def pooling_net(path, kernel, stride, pad, shape, ntop):
    """A max pooling of `shape`, with its index output (a second top) if ntop is 2."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=list(shape)))
    tops = L.Pooling(n.data, pool=P.Pooling.MAX, kernel_size=kernel, stride=stride,
                     pad=pad, ntop=ntop)
    if ntop == 2:
        n.out, n.mask = tops
    else:
        n.out = tops
    proto = n.to_proto()
    proto.force_backward = True
    path.write_text(str(proto))
    return caffe.Net(str(path), caffe.TEST)


def tied_values(shape, seed):
    """Values from a few levels, so that windows hold ties (the first maximum counts)."""
    return np.random.default_rng(seed).integers(-3, 4, size=shape).astype(np.float32)


# 2 x 16 planes: enough values for the parallel paths (max-pool-parallel.patch); even and
# odd sizes, whose last row and column of 2x2 windows are cut by the edge (those take the
# general loop, whole 2x2 windows the branch-free one: max-pool-windows-and-backward.patch).
POOL_SHAPES = [(2, 16, 60, 70), (2, 16, 61, 71)]


@pytest.mark.parametrize('shape', POOL_SHAPES, ids=['even', 'odd'])
@pytest.mark.parametrize('kernel, stride, pad', [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_parallel_max_pooling_matches_direct_computation(tmp_path, kernel, stride, pad,
                                                         shape, two_threads):
    # One window of NaNs, as in a diverged net.
    net = pooling_net(tmp_path / 'pool.prototxt', kernel, stride, pad, shape, ntop=2)
    x = tied_values(shape, seed=5)
    x[1, 7, 10:10 + 2 * kernel, 20:20 + 2 * kernel] = np.nan
    net.blobs['data'].data[...] = x
    net.forward()
    values, indices = max_pool_reference(x, kernel, stride, pad, net.blobs['out'].data.shape)
    assert (indices == -1).any()
    np.testing.assert_array_equal(net.blobs['out'].data, values.astype(np.float32))
    np.testing.assert_array_equal(net.blobs['mask'].data, indices)


@pytest.mark.parametrize('shape', POOL_SHAPES, ids=['even', 'odd'])
@pytest.mark.parametrize('kernel, stride, pad', [(2, 2, 0), (3, 2, 1)])
def test_parallel_max_pooling_gradient_goes_to_the_maxima(tmp_path, kernel, stride, pad,
                                                          shape, two_threads):
    # With one top the indices stay inside the layer: its backward shows them, each
    # output's gradient added to the input pixel its window took (overlapping windows
    # can add several to one pixel).
    net = pooling_net(tmp_path / 'pool.prototxt', kernel, stride, pad, shape, ntop=1)
    x = tied_values(shape, seed=6)
    net.blobs['data'].data[...] = x
    net.forward()
    values, indices = max_pool_reference(x, kernel, stride, pad, net.blobs['out'].data.shape)
    np.testing.assert_array_equal(net.blobs['out'].data, values.astype(np.float32))
    dy = np.random.default_rng(7).standard_normal(values.shape).astype(np.float32)
    net.blobs['out'].diff[...] = dy
    net.backward()
    net.backward()  # the second pass must start from zero again, not add to the first
    expected = np.zeros(x.shape[:2] + (x.shape[2] * x.shape[3],))
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            np.add.at(expected[n, c], indices[n, c].ravel(), dy[n, c].ravel())
    np.testing.assert_allclose(net.blobs['data'].diff, expected.reshape(x.shape),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('negative_slope', [0, 0.25])
def test_parallel_relu_matches_the_formula(tmp_path, negative_slope, two_threads):
    # 2 x 8 planes of 100 x 100: enough values for the threaded loops (relu-parallel.patch).
    # Caffe's formulas in float32, to the bit: max(x, 0) + s min(x, 0) forward, the output
    # gradient where x > 0 and s times it elsewhere (zeros included) backward.
    shape = (2, 8, 100, 100)
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=list(shape)))
    n.out = L.ReLU(n.data, negative_slope=negative_slope)
    proto = n.to_proto()
    proto.force_backward = True
    path = tmp_path / 'relu.prototxt'
    path.write_text(str(proto))
    net = caffe.Net(str(path), caffe.TEST)
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[::9] = 0
    dy = rng.standard_normal(shape).astype(np.float32)
    slope = np.float32(negative_slope)
    net.blobs['data'].data[...] = x
    net.forward()
    net.blobs['out'].diff[...] = dy
    net.backward()
    np.testing.assert_array_equal(net.blobs['out'].data,
                                  np.maximum(x, 0) + slope * np.minimum(x, 0))
    np.testing.assert_array_equal(net.blobs['data'].diff, np.where(x > 0, dy, slope * dy))


def adam_reference(weights, gradients, rate, beta1, beta2, delta, decay):
    """Adam's updates (Kingma & Ba, with Caffe's weight decay added to the gradient first) at
    t = 1, 2, ..., in float64."""
    w = weights.astype(np.float64)
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(gradients, 1):
        correction = np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
        g = g + decay * w
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w = w - rate * correction * m / (np.sqrt(v) + delta)
    return w


def test_adam_update_matches_the_formula(tmp_path, two_threads):
    # One blob above the parallel threshold of adam-fused-update.patch (300 x 200 weights)
    # and one below it (300 biases); three updates, so the moments carry over.
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 200]))
    n.out = L.InnerProduct(n.data, num_output=300)
    (tmp_path / 'net.prototxt').write_text(str(n.to_proto()))
    (tmp_path / 'solver.prototxt').write_text(
        f'net: "{tmp_path / "net.prototxt"}"\ntype: "Adam"\nbase_lr: 0.001\n'
        'lr_policy: "fixed"\nmomentum: 0.9\nmomentum2: 0.999\ndelta: 1e-8\n'
        'weight_decay: 0.0005\nsnapshot_prefix: "unused"\n')
    solver = caffe.get_solver(str(tmp_path / 'solver.prototxt'))
    rng = np.random.default_rng(11)
    blobs = solver.net.params['out']
    start = [(rng.standard_normal(b.data.shape) * 0.01).astype(np.float32) for b in blobs]
    gradients = [[(rng.standard_normal(b.data.shape) *
                   10.0 ** rng.integers(-4, 1, b.data.shape)).astype(np.float32)
                  for _ in range(3)] for b in blobs]
    for blob, values in zip(blobs, start):
        blob.data[...] = values
    for step in range(3):
        for blob, grads in zip(blobs, gradients):
            blob.diff[...] = grads[step]
        solver.apply_update()
    for blob, values, grads in zip(blobs, start, gradients):
        expected = adam_reference(values, grads, 0.001, 0.9, 0.999, 1e-8, 0.0005)
        # float32 weights move in steps of their spacing: a few of those is the rounding
        spacing = np.spacing(np.abs(blob.data).max())
        np.testing.assert_allclose(blob.data - values, expected - values, rtol=1e-4,
                                   atol=4 * spacing)
