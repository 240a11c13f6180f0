"""The pieces every body builder shares: inputs, score heads, losses, and the solver.

A net is built for one of three variants:

    train   the data layer on the training split, dropout, losses
    val     the same on the evaluation split (as the reference release, loss and dropout
            stay: the solver's test net is this file, and dropout is idle in TEST phase)
    deploy  an Input layer named "input" instead of the data layer; no dropout, no loss

Crop offsets are never written here: `models.coord.crop` (Caffe's coord_map, extended
through Concat for GoogLeNet) derives each from the net.
"""
import json
import math

from caffe import layers as L, params as P
from caffe.proto import caffe_pb2

from models.coord import crop

VARIANTS = ('train', 'val', 'deploy')
SEED = 1337
IGNORE_LABEL = 255

# Weights learn at the base rate with weight decay, biases at twice the rate without.
LEARNED = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]
# Bilinear upsampling and the at-once skip scales stay as set.
FIXED = [dict(lr_mult=0)]

# Channels of each input top; "data" is the 3-channel BGR image.
CHANNELS = {'data': 3, 'color': 3, 'hha': 3, 'depth': 1}

# fc6 and fc7 of the ILSVRC classifiers (VGG16, CaffeNet), and their FCN convolutions.
FC_OUTPUTS = 4096

SOLVER_DEFAULTS = dict(
    train_net='train.prototxt', test_net=['val.prototxt'],
    test_interval=999999999, test_initialization=False,
    display=20, average_loss=20)
# solver.prototxt lists the fields in this order (protobuf would print them by number).
SOLVER_ORDER = ('train_net', 'test_net', 'test_iter', 'test_interval', 'test_initialization',
                'display', 'average_loss', 'type', 'lr_policy', 'base_lr', 'power', 'momentum',
                'iter_size', 'max_iter', 'weight_decay', 'snapshot', 'snapshot_prefix',
                'random_seed')
SOLVER_COMMENTS = {
    'test_interval': 'the test net is set up but never run by the solver: evaluation runs '
                     'from Python between solver steps',
}


def scaled(channels, width):
    """A body layer's outputs under a width multiplier (at least one)."""
    return max(1, round(channels * width))


def conv_relu(n, name, relu, bottom, nout, ks, param, filler=None, **conv_params):
    """Convolution `name` and its in-place ReLU `relu`; returns the rectified top."""
    if param is not None:
        conv_params['param'] = param
    if filler is not None:
        conv_params['weight_filler'] = dict(type=filler)
    n[name] = L.Convolution(bottom, num_output=nout, kernel_size=ks, **conv_params)
    n[relu] = L.ReLU(n[name], in_place=True)
    return n[relu]


def fc_relu(n, name, relu, bottom, nout, param, filler=None):
    """InnerProduct `name` and its in-place ReLU `relu` (classifier fc6/fc7)."""
    n[name] = fully_connected(bottom, nout, param, filler)
    n[relu] = L.ReLU(n[name], in_place=True)
    return n[relu]


def fully_connected(bottom, nout, param, filler=None):
    extra = {} if param is None else dict(param=param)
    if filler is not None:
        extra['weight_filler'] = dict(type=filler)
    return L.InnerProduct(bottom, num_output=nout, **extra)


def max_pool(bottom, ks, stride):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def dropout(n, name, bottom, variant, ratio=0.5):
    """In-place dropout (0.5 unless the body's classifier used another ratio), left out of
    deploy nets; returns the top to build on."""
    if variant == 'deploy':
        return bottom
    n[name] = L.Dropout(bottom, dropout_ratio=ratio, in_place=True)
    return n[name]


# ---- inputs ------------------------------------------------------------------------

def image_tops(spec):
    """Names of the net's image inputs, in data-layer order: "data" for one image, else
    one top per modality (fused into one body or one body each)."""
    if len(spec.modalities) > 1:
        return tuple(spec.modalities)
    return ('data',)


def label_tops(spec):
    return tuple(head.label for head in spec.heads)


def input_shapes(spec, size, labels=False):
    """Blob shapes of the net's inputs for images of `size` (height, width): the images,
    and the labels too if asked (what the data layer emits, for tests and tools)."""
    batch = spec.batch_size
    shapes = {top: (batch, CHANNELS[modality], *size)
              for top, modality in zip(image_tops(spec), spec.modalities or ('data',))}
    if labels:
        for label in label_tops(spec):
            shapes[label] = (batch,) if spec.task == 'classification' else (batch, 1, *size)
    return shapes


def data_source(spec, variant):
    """The DataLayer of a train or val net."""
    return spec.train_data if variant == 'train' else spec.val_data


def data_params(spec, variant):
    """The JSON parameters of the data layer of a train or val net."""
    params = dict(data_source(spec, variant).params)
    params['split'] = spec.train_split if variant == 'train' else spec.val_split
    if spec.modalities:
        params['tops'] = list(spec.modalities) + list(label_tops(spec))
    params['randomize'] = variant == 'train'
    params['seed'] = SEED
    if spec.task == 'classification':
        params['batch_size'] = spec.batch_size
    return params


def inputs(n, spec, variant):
    """Assign the input tops (images, and labels unless deploying); returns the image tops
    by name, in order."""
    images = image_tops(spec)
    if variant == 'deploy':
        shapes = input_shapes(spec, spec.deploy_size)
        names = images
        tops = L.Input(ntop=len(names), shape=[dict(dim=list(shapes[top])) for top in names])
    else:
        module, layer = data_source(spec, variant).layer.rsplit('.', 1)
        names = images + label_tops(spec)
        tops = L.Python(module=module, layer=layer, ntop=len(names),
                        param_str=json.dumps(data_params(spec, variant)))
    if len(names) == 1:
        tops = (tops,)
    for name, top in zip(names, tops):
        n[name] = top
    return {name: n[name] for name in images}


# ---- segmentation heads ------------------------------------------------------------

def score_conv(bottom, num_classes):
    """A 1x1 class scoring layer (zero-initialised, as the reference: training starts
    from the transplanted body)."""
    return L.Convolution(bottom, num_output=num_classes, kernel_size=1, pad=0, param=LEARNED)


def upsample(bottom, num_classes, factor, kernel=None):
    """Fixed upsampling by `factor`: a deconvolution that surgery fills with a bilinear
    kernel of size 2 * factor (unless a body needs another)."""
    return L.Deconvolution(bottom, param=FIXED, convolution_param=dict(
        num_output=num_classes, kernel_size=kernel or 2 * factor, stride=factor,
        bias_term=False))


def head_suffix(head):
    """Names of a head's layers end as its score top does after "score" ("_sem")."""
    if not head.score.startswith('score'):
        raise ValueError(f'head score top {head.score!r} does not start with "score"')
    return head.score[len('score'):]


SKIPS = {32: (), 16: ('pool4',), 8: ('pool4', 'pool3')}


def segmentation_head(n, spec, variant, index, head, coarse, pools, crop_to, kernel=None):
    """From a head's coarse score (stride 32) to its score top at input resolution.

    Each skip doubles the resolution: the coarse score is upsampled 2x and summed with the
    skip pool's own 1x1 score, cropped into alignment. The last fused score is upsampled
    to the input and cropped to it; `kernel` overrides that upsampling's kernel size.
    """
    s = head_suffix(head)
    classes = head.num_classes
    factor = 32
    for step, pool in enumerate(SKIPS[spec.stride]):
        upscore = 'upscore2' if step == 0 else 'upscore_' + SKIPS[spec.stride][step - 1]
        n[upscore + s] = upsample(coarse, classes, 2)
        skip_input = pools[pool]
        if spec.skip_scales:
            scale_name = 'scale_' + pool
            if scale_name not in n.tops:
                n[scale_name] = L.Scale(pools[pool], param=FIXED, scale_param=dict(
                    filler=dict(type='constant', value=spec.skip_scales[step])))
            skip_input = n[scale_name]
        n[f'score_{pool}{s}'] = score_conv(skip_input, classes)
        n[f'score_{pool}{s}c'] = crop(n[f'score_{pool}{s}'], n[upscore + s])
        n[f'fuse_{pool}{s}'] = L.Eltwise(n[upscore + s], n[f'score_{pool}{s}c'],
                                         operation=P.Eltwise.SUM)
        coarse = n[f'fuse_{pool}{s}']
        factor //= 2
    final = 'upscore' if factor == 32 else f'upscore{factor}'
    n[final + s] = upsample(coarse, classes, factor, kernel)
    n[head.score] = crop(n[final + s], crop_to)
    if variant != 'deploy':
        # The first head's loss is plain "loss", so that the solver reports it as such.
        loss = 'loss' if index == 0 else 'loss' + s
        n[loss] = L.SoftmaxWithLoss(n[head.score], n[head.label], loss_param=dict(
            normalize=spec.normalize_loss, ignore_label=IGNORE_LABEL))


# ---- classifier output -------------------------------------------------------------

def classifier_head(n, spec, variant, bottom, param, filler=None):
    """fc8, then the loss and accuracy (train/val) or the softmax (deploy)."""
    head, = spec.heads
    n[head.score] = fully_connected(bottom, head.num_classes, param, filler)
    if variant == 'deploy':
        n.prob = L.Softmax(n[head.score])
    else:
        n.loss = L.SoftmaxWithLoss(n[head.score], n[head.label],
                                   loss_param=dict(normalize=spec.normalize_loss))
        n.accuracy = L.Accuracy(n[head.score], n[head.label])


# ---- output ------------------------------------------------------------------------

def fc_classifier(n, spec, variant, pool5, param):
    """An ILSVRC classifier's tail: InnerProduct fc6 and fc7 (4096 wide at width 1), each
    with ReLU and dropout, then the fc8 head."""
    outputs = scaled(FC_OUTPUTS, spec.width)
    top = fc_relu(n, 'fc6', 'relu6', pool5, outputs, param, spec.weight_filler)
    top = dropout(n, 'drop6', top, variant)
    top = fc_relu(n, 'fc7', 'relu7', top, outputs, param, spec.weight_filler)
    top = dropout(n, 'drop7', top, variant)
    classifier_head(n, spec, variant, top, param, spec.weight_filler)
    return to_proto(n)


def single_head_fcn(n, spec, variant, features, image, kernel):
    """The one-head FCN tail: score_fr on the features, upsampled by `kernel` and cropped
    to the image."""
    head, = spec.heads
    n.score_fr = score_conv(features, head.num_classes)
    segmentation_head(n, spec, variant, 0, head, n.score_fr, {}, crop_to=image, kernel=kernel)
    return to_proto(n)


def to_proto(n):
    """The NetParameter, with the deploy Input layer named "input" as in the reference's
    deploy net (NetSpec would name it after its first top)."""
    net = n.to_proto()
    for layer in net.layer:
        if layer.type == 'Input':
            layer.name = 'input'
    return net


def solver(spec):
    """solver.prototxt's text: the reference hyperparameters, paths relative to the model
    folder."""
    message = caffe_pb2.SolverParameter(
        **SOLVER_DEFAULTS, test_iter=[math.ceil(spec.val_size / spec.batch_size)],
        base_lr=spec.base_lr, momentum=spec.momentum, iter_size=spec.iter_size,
        max_iter=spec.max_iter, lr_policy=spec.lr_policy, weight_decay=spec.weight_decay)
    if spec.power is not None:
        message.power = spec.power
    if spec.snapshot:  # the reference's SIFT Flow solvers name no snapshots at all
        message.snapshot = spec.snapshot
        message.snapshot_prefix = 'snapshot/train'
    if spec.solver_type != 'SGD':  # the reference solvers leave Caffe's default unwritten
        message.type = spec.solver_type
    if spec.random_seed is not None:
        message.random_seed = spec.random_seed
    # A SolverParameter prints one "field: value" line per field (none is a message).
    text = ''
    for line in sorted(str(message).splitlines(),
                       key=lambda line: SOLVER_ORDER.index(line.split(':')[0])):
        field = line.split(':')[0]
        if field in SOLVER_COMMENTS:
            text += f'# {SOLVER_COMMENTS[field]}\n'
        text += line + '\n'
    return text
