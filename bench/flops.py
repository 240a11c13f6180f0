"""Floating-point work of a Caffe net: two FLOPs per multiply-add of its (de)convolutions.

Other layers (ReLU, pooling, crops, sums, the loss) cost under 1% of an FCN and are not
counted, as in the FLOP figures the FCN paper and GEMM benchmarks quote.
"""

from bench.nets import conv_geometry, in_phase, param_mults

CONVOLUTIONS = ('Convolution', 'Deconvolution')


def forward_flops(layer, shapes):
    """FLOPs of one forward pass of a (de)convolution given the blob shapes of the net."""
    (kh, kw), _, _, _, group = conv_geometry(layer.convolution_param)
    bottom, top = shapes[layer.bottom[0]], shapes[layer.top[0]]
    # Each output (input, for a deconvolution) value takes channels/group * kh * kw MACs
    # over the channels on the other side.
    if layer.type == 'Convolution':
        outputs, reduced_channels = _count(top), bottom[1] // group
    else:
        outputs, reduced_channels = _count(bottom), top[1] // group
    return 2 * outputs * reduced_channels * kh * kw


def net_flops(net, shapes, phase):
    """[(layer name, forward FLOPs, backward FLOPs)] for the (de)convolutions of `net`.

    Backward follows Caffe's own pruning: a weight gradient only for learned weights
    (lr_mult > 0) and an input gradient only where something below learns.
    """
    needs_grad = set()
    rows = []
    for layer in net.layer:
        if not in_phase(layer, phase):
            continue
        learns = any(param_mults(layer, i)[0] > 0 for i in range(_num_params(layer)))
        bottom_grad = any(bottom in needs_grad for bottom in layer.bottom)
        if layer.type in CONVOLUTIONS:
            forward = forward_flops(layer, shapes)
            backward = forward * (int(param_mults(layer, 0)[0] > 0) + int(bottom_grad))
            rows.append((layer.name, forward, backward))
        if learns or bottom_grad:
            needs_grad.update(layer.top)
    return rows


def _num_params(layer):
    if layer.type in CONVOLUTIONS:
        return 2 if layer.convolution_param.bias_term else 1
    return len(layer.param)


def _count(shape):
    count = 1
    for dim in shape:
        count *= dim
    return count
