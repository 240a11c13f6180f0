"""The engines a deploy net runs on for inference: Caffe, OpenCV's DNN module, ONNX Runtime.

Each is a small class with the same face: `inputs` ({input blob: channels}), `outputs`
(the net's output blobs) and `forward({input blob: N x C x H x W float32}) ->
{output blob: array}`, at any height and width. Caffe trains and is the oracle; OpenCV
(which reads Caffe's prototxt and caffemodel itself) and ONNX Runtime (which runs the
ONNX file solve/export.py writes) need neither Caffe nor a compiler: those two classes
import only numpy and their runtime, so a light virtualenv (requirements-infer.txt)
runs them.
"""
import re
from pathlib import Path

import numpy as np

from fcn.errors import UsageError

NAMES = ('caffe', 'opencv', 'onnxruntime')


def add_options(parser, what):
    """--runtime and --onnx, as infer.py and score.py take them; `what`: what the runtime
    does there, for the help."""
    parser.add_argument('--runtime', choices=NAMES, default='caffe',
                        help=f'{what} (default caffe); opencv and onnxruntime run on the CPU '
                             'without Caffe')
    parser.add_argument('--onnx', type=Path, metavar='FILE',
                        help='the ONNX model for --runtime onnxruntime (solve/export.py)')


def option_problem(args):
    """What is wrong with a command's --runtime, --weights, --onnx, --gpu and
    --allow-missing-layers taken together, or None."""
    if args.runtime == 'onnxruntime':
        if args.onnx is None or args.weights is not None:
            return ('--runtime onnxruntime takes --onnx FILE (written by solve/export.py, '
                    'which holds the weights), not --weights')
    elif args.weights is None:
        return 'MODEL needs --weights'
    elif args.onnx is not None:
        return '--onnx is for --runtime onnxruntime'
    if args.runtime != 'caffe' and (args.gpu is not None or args.allow_missing_layers):
        return (f"--runtime {args.runtime} runs on the CPU with all of the net's weights: "
                '--gpu and --allow-missing-layers are for --runtime caffe')
    return None


def deploy_runtime(name, deploy, weights=None, onnx=None):
    """The OpenCV or ONNX Runtime engine of a deploy net (OpenCV: the prototxt `deploy`
    with `weights`; ONNX Runtime: the file `onnx`, which holds both); None for caffe,
    whose net the caller loads (with Caffe's weights checks and device)."""
    if name == 'onnxruntime':
        return OnnxRuntime(onnx)
    if name == 'opencv':
        return OpenCVRuntime(deploy, weights)
    return None


class CaffeRuntime:
    """A loaded caffe.Net (fcn.nets.load_net)."""
    name = 'caffe'

    def __init__(self, net):
        self.net = net
        self.inputs = {name: net.blobs[name].data.shape[1] for name in net.inputs}
        self.outputs = list(net.outputs)

    def adapt(self):
        from fcn.runtime import threads
        threads.adapt()

    def forward(self, inputs):
        for name, array in inputs.items():
            self.net.blobs[name].reshape(*array.shape)
            self.net.blobs[name].data[...] = array
        self.net.reshape()
        self.net.forward()
        return {name: np.array(self.net.blobs[name].data) for name in self.outputs}


def prototxt_tokens(text):
    """The tokens of a protobuf text file: names, quoted strings, numbers, ':', '{', '}'."""
    text = re.sub(r'#[^\n]*', '', text)
    return re.findall(r'"(?:[^"\\]|\\.)*"|[{}:]|[^\s{}:"]+', text)


def prototxt_layers(path):
    """The `layer { ... }` blocks of a prototxt, read without Caffe's protobuf module (a
    light virtualenv has none), each as its list of (field, value) pairs at any depth,
    values unquoted (a message field's value is '{'): enough for the Input layer's shapes
    and the parameter layers' sizes."""
    try:
        tokens = prototxt_tokens(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f'cannot read the net definition {path} ({error})') from None
    layers, stack = [], []
    for index, token in enumerate(tokens):
        if token == '{':
            stack.append((tokens[index - 1] if index else '', index))
        elif token == '}' and stack:
            key, start = stack.pop()
            if key == 'layer' and not stack:
                block = tokens[start + 1:index] + ['}']
                layers.append([(block[i], block[i + 2].strip('"')) if block[i + 1] == ':'
                               else (block[i], '{')
                               for i in range(len(block) - 2) if block[i + 1] in ':{'])
    return layers


def field(pairs, name, default=None):
    values = [value for key, value in pairs if key == name]
    return values[0] if values else default


def prototxt_inputs(path, layers=None):
    """{top: channels} of a deploy prototxt's Input layer (its `shape { dim: ... }`);
    `layers`: its prototxt_layers, when already read."""
    for pairs in layers if layers is not None else prototxt_layers(path):
        if field(pairs, 'type') != 'Input':
            continue
        tops = [value for key, value in pairs if key == 'top']
        dims = [int(value) for key, value in pairs if key == 'dim']
        shapes = [dims[i:i + 4] for i in range(0, len(dims), 4)]
        if tops and shapes and len(dims) % 4 == 0:
            return {top: shapes[min(i, len(shapes) - 1)][1] for i, top in enumerate(tops)}
    raise UsageError(f'{path} has no Input layer with 4-d shapes: give a deploy net '
                     f'(models/MODEL/deploy.prototxt)')


def parameter_shapes(path, layers=None):
    """{layer name: (blob shapes, whether the definition fills them)} of a deploy
    prototxt's Convolution, Deconvolution and Scale layers, the channels followed from the
    Input layer; a shape is None where a layer before it is of a kind not followed.
    `layers`: its prototxt_layers, when already read."""
    layers = prototxt_layers(path) if layers is None else layers
    channels = dict(prototxt_inputs(path, layers))
    shapes = {}
    for pairs in layers:
        kind, name = field(pairs, 'type'), field(pairs, 'name')
        bottoms = [channels.get(value) for key, value in pairs if key == 'bottom']
        given = bottoms[0] if bottoms else None
        out = given
        if kind in ('Convolution', 'Deconvolution'):
            out = int(field(pairs, 'num_output', 0))
            group = int(field(pairs, 'group', 1))
            kernel = [int(v) for k, v in pairs if k == 'kernel_size'] or \
                [int(field(pairs, 'kernel_h', 0)), int(field(pairs, 'kernel_w', 0))]
            kernel = kernel * 2 if len(kernel) == 1 else kernel
            weight = None if given is None else \
                (out, given // group, *kernel) if kind == 'Convolution' else \
                (given, out // group, *kernel)
            blobs = [weight] + ([(out,)] if field(pairs, 'bias_term', 'true') != 'false' else [])
            shapes[name] = (blobs, False)
        elif kind == 'Scale':
            blobs = [None if given is None else (given,)]
            if field(pairs, 'bias_term', 'false') == 'true':
                blobs.append(blobs[0])
            learned = [value for key, value in pairs if key == 'lr_mult']
            shapes[name] = (blobs, bool(learned) and all(float(v) == 0 for v in learned)
                            and field(pairs, 'filler') is not None)
        elif kind == 'Concat':
            out = None if None in bottoms else sum(bottoms)
        elif kind not in ('ReLU', 'Pooling', 'LRN', 'Crop', 'Eltwise', 'Dropout', 'Softmax',
                          'Input'):
            out = None
        if kind != 'Input':
            for top in (value for key, value in pairs if key == 'top'):
                channels[top] = out
    return shapes


def check_weights(prototxt, weights, layers=None):
    """Refuse a weights file OpenCV cannot run the deploy net with (OpenCV ends the
    process on a layer whose weights are missing or of other shapes): it must be a whole
    caffemodel holding blobs of the net's shapes for every Convolution, Deconvolution and
    Scale layer but those the definition fills. Read without Caffe (fcn.caffemodel)."""
    from fcn import caffemodel
    records = caffemodel.checked_layers(weights, schema=False)
    held = {record.name: record.shapes for record in records}
    missing = []
    for name, (shapes, filled) in parameter_shapes(prototxt, layers).items():
        if name not in held:
            if not filled:
                missing.append(name)
            continue
        if len(held[name]) != len(shapes) or not all(
                want is None or caffemodel.shapes_match(have, want)
                for have, want in zip(held[name], shapes)):
            raise UsageError(f'{weights}: layer {name} holds blobs of shapes '
                             f'{", ".join(map(str, held[name])) or "none"} where {prototxt} '
                             f'has {", ".join(map(str, shapes))}: the file holds another '
                             f"net's weights; give weights trained for this net")
    if missing:
        raise UsageError(f'{weights} has no weights for {len(missing)} layers of {prototxt} '
                         f'({", ".join(missing[:8])}{", ..." if len(missing) > 8 else ""}): '
                         f"it holds another net's weights; give weights trained for this "
                         f'net (OpenCV cannot run a net with layers left empty)')


class OpenCVRuntime:
    """OpenCV's DNN module on a Caffe prototxt and caffemodel (cv2.dnn.readNetFromCaffe)."""
    name = 'opencv'

    def __init__(self, prototxt, weights):
        try:
            import cv2
        except ImportError as error:
            raise UsageError(f'--runtime opencv needs OpenCV ({error}): install '
                             f'opencv-python-headless (requirements-infer.txt)') from None
        layers = prototxt_layers(prototxt)
        self.inputs = prototxt_inputs(prototxt, layers)
        check_weights(prototxt, weights, layers)
        try:
            self.net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
            if self.net.empty():
                raise UsageError(f'OpenCV read no layers from {prototxt} and {weights}: '
                                 f'give a deploy net and its Caffe weights')
            # Every layer made now, on a small input: a layer type OpenCV lacks is named here.
            self.net.getLayersShapes([(1, channels, 64, 64)
                                      for channels in self.inputs.values()])
        except cv2.error as error:
            raise UsageError(f'OpenCV {cv2.__version__} cannot read {prototxt} with '
                             f'{weights}: {opencv_message(error)}; run the model with '
                             f'--runtime caffe or onnxruntime') from None
        self.outputs = list(self.net.getUnconnectedOutLayersNames())
        self.cv2 = cv2

    def adapt(self):
        pass

    def forward(self, inputs):
        for name, array in inputs.items():
            self.net.setInput(np.ascontiguousarray(array, np.float32), name)
        try:
            results = self.net.forward(self.outputs)
        except self.cv2.error as error:
            raise UsageError(f'OpenCV could not run the net: {opencv_message(error)}') \
                from None
        return dict(zip(self.outputs, (np.array(r) for r in results)))


def opencv_message(error):
    """The last line of a cv2.error, which says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else str(error)


class OnnxRuntime:
    """ONNX Runtime on the CPU on an ONNX file (solve/export.py)."""
    name = 'onnxruntime'

    def __init__(self, path):
        try:
            import onnxruntime
        except ImportError as error:
            raise UsageError(f'--runtime onnxruntime needs ONNX Runtime ({error}): install '
                             f'onnxruntime (requirements-infer.txt)') from None
        if not Path(path).is_file():
            raise UsageError(f'{path} does not exist: write it with solve/export.py')
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=['CPUExecutionProvider'])
        except Exception as error:  # onnxruntime's own exception types are not public
            raise UsageError(f'ONNX Runtime {onnxruntime.__version__} cannot load {path} '
                             f'({str(error).strip().splitlines()[-1]}): write it again with '
                             f'solve/export.py') from None
        self.inputs = {i.name: i.shape[1] for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]

    def adapt(self):
        pass

    def forward(self, inputs):
        try:
            results = self.session.run(self.outputs, {
                name: np.ascontiguousarray(a, np.float32) for name, a in inputs.items()})
        except Exception as error:  # onnxruntime's own exception types are not public
            raise UsageError(f'ONNX Runtime could not run the net '
                             f'({str(error).strip().splitlines()[-1]})') from None
        return dict(zip(self.outputs, results))
