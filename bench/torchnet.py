"""A PyTorch re-implementation of a Caffe net, layer for layer, from its NetParameter.

It covers the layer types of the FCN nets (Input, Convolution, Deconvolution, ReLU, MAX
Pooling, Dropout, Crop, Eltwise, SoftmaxWithLoss) with Caffe's semantics: Caffe's weight
layouts (which PyTorch shares), pooling that rounds up, crops at explicit offsets, and the
loss normalisation modes. Parameters are keyed 'layer/index' like `nets.random_weights`.
"""

import torch
import torch.nn.functional as F

from bench.nets import caffe_pb2, conv_geometry, in_phase, param_mults


class CaffeNet(torch.nn.Module):
    """Runs the layers of `net` (a NetParameter) in order on a dict of named blobs."""

    def __init__(self, net, weights, phase):
        super().__init__()
        pb = caffe_pb2()
        self.layers = [layer for layer in net.layer
                       if in_phase(layer, phase) and layer.type != 'Input']
        unsupported = sorted({layer.type for layer in self.layers} - set(LAYERS))
        if unsupported:
            raise ValueError(f'no PyTorch version of Caffe layer type(s) {unsupported}')
        self.params = torch.nn.ParameterDict()
        self.mults = {}
        self.keys = {}
        for layer in self.layers:
            self.keys[layer.name] = []
            while f'{layer.name}/{len(self.keys[layer.name])}' in weights:
                index = len(self.keys[layer.name])
                key = f'{layer.name}/{index}'
                lr_mult, decay_mult = param_mults(layer, index)
                self.params[key] = torch.nn.Parameter(torch.from_numpy(weights[key].copy()),
                                                      requires_grad=lr_mult > 0)
                self.mults[key] = (lr_mult, decay_mult)
                self.keys[layer.name].append(key)
        self.train(phase == pb.TRAIN)

    def forward(self, blobs):
        blobs = dict(blobs)
        for layer in self.layers:
            bottoms = [blobs[name] for name in layer.bottom]
            params = [self.params[key] for key in self.keys[layer.name]]
            blobs[layer.top[0]] = LAYERS[layer.type](self, layer, bottoms, params)
        return blobs

    def losses(self, blobs):
        return sum(blobs[layer.top[0]] for layer in self.layers if layer.type in LOSSES)

    def param_groups(self, solver):
        """SGD parameter groups with Caffe's per-blob learning-rate and decay multipliers."""
        return [{'params': [param], 'lr': solver.base_lr * self.mults[key][0],
                 'weight_decay': solver.weight_decay * self.mults[key][1]}
                for key, param in self.params.items() if param.requires_grad]


def _convolution(net, layer, bottoms, params):
    kernel, stride, pad, dilation, group = conv_geometry(layer.convolution_param)
    weight, bias = params[0], (params[1] if len(params) > 1 else None)
    if layer.type == 'Convolution':
        return F.conv2d(bottoms[0], weight, bias, stride, pad, dilation, group)
    return F.conv_transpose2d(bottoms[0], weight, bias, stride, pad, 0, group, dilation)


def _relu(net, layer, bottoms, params):
    slope = layer.relu_param.negative_slope
    return F.leaky_relu(bottoms[0], slope) if slope else F.relu(bottoms[0])


def _pooling(net, layer, bottoms, params):
    pool = layer.pooling_param
    if pool.pool != caffe_pb2().PoolingParameter.MAX or pool.global_pooling:
        raise ValueError(f'layer {layer.name!r}: only MAX pooling over windows is supported')
    kernel = (pool.kernel_h, pool.kernel_w) if pool.kernel_h else pool.kernel_size
    stride = (pool.stride_h, pool.stride_w) if pool.stride_h else pool.stride
    pad = (pool.pad_h, pool.pad_w) if pool.pad_h else pool.pad
    # Caffe rounds the output size up and drops a last window that starts in the padding,
    # which is exactly PyTorch's ceil_mode.
    return F.max_pool2d(bottoms[0], kernel, stride, pad, ceil_mode=True)


def _dropout(net, layer, bottoms, params):
    return F.dropout(bottoms[0], layer.dropout_param.dropout_ratio, net.training)


def _crop(net, layer, bottoms, params):
    source, reference = bottoms
    axis = layer.crop_param.axis % source.dim()
    offsets = list(layer.crop_param.offset) or [0]
    index = [slice(None)] * source.dim()
    for i in range(axis, source.dim()):
        offset = offsets[0] if len(offsets) == 1 else offsets[i - axis]
        index[i] = slice(offset, offset + reference.shape[i])
    return source[tuple(index)]


def _eltwise(net, layer, bottoms, params):
    eltwise = layer.eltwise_param
    modes = caffe_pb2().EltwiseParameter
    if eltwise.operation == modes.SUM:
        coeffs = list(eltwise.coeff) or [1.0] * len(bottoms)
        return sum(c * b if c != 1 else b for c, b in zip(coeffs, bottoms))
    if eltwise.operation == modes.PROD:
        return torch.stack(bottoms).prod(0)
    return torch.stack(bottoms).amax(0)


def _softmax_loss(net, layer, bottoms, params):
    scores, label = bottoms
    loss = layer.loss_param
    modes = caffe_pb2().LossParameter
    ignore = loss.ignore_label if loss.HasField('ignore_label') else -100
    target = label[:, 0].long()
    total = F.cross_entropy(scores, target, ignore_index=ignore, reduction='sum')
    if loss.HasField('normalization'):
        mode = loss.normalization
    elif loss.HasField('normalize'):
        mode = modes.VALID if loss.normalize else modes.BATCH_SIZE
    else:
        mode = modes.VALID
    normalizer = {modes.FULL: target.numel(),
                  modes.VALID: int((target != ignore).sum()),
                  modes.BATCH_SIZE: target.shape[0],
                  modes.NONE: 1}[mode]
    return total / max(1, normalizer)


LAYERS = {
    'Convolution': _convolution, 'Deconvolution': _convolution, 'ReLU': _relu,
    'Pooling': _pooling, 'Dropout': _dropout, 'Crop': _crop, 'Eltwise': _eltwise,
    'SoftmaxWithLoss': _softmax_loss,
}
LOSSES = ('SoftmaxWithLoss',)
