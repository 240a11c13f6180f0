"""A PyTorch re-implementation of a Caffe net, layer for layer, from its NetParameter.

It covers the layer types of the FCN nets (Input, Convolution, Deconvolution, ReLU, MAX
Pooling, Dropout, Crop, Eltwise, SoftmaxWithLoss) with Caffe's semantics: Caffe's weight
layouts (which PyTorch shares), pooling that rounds up, crops at explicit offsets, and the
loss normalisation modes. Parameters are keyed 'layer/index' like `nets.random_weights`.

Each layer is read from the NetParameter once, into a step that holds only Python numbers
and the layer's function, so a pass runs no protobuf code and torch.compile can trace it.

The deploy net's forward pass comes in FORMS, which compute the same numbers and differ in
how they use memory and oneDNN (the benchmark times them all against Caffe; its baseline
is the fastest):
- 'layers': every layer's top a new tensor, all kept until the pass ends (`forward`, also
  what training and the gradient check run). Its ReLUs allocate where Caffe's work in
  place, and the kept blobs leave the allocator no freed memory to reuse, so new tensors
  are fresh pages that the kernel maps and zeroes on first touch. FCN-8s at 500x375 in a
  process of its own (AMD EPYC Zen 3): 1.8 GB of page faults a pass; 'plain' 1.4,
  'channels_last' 0.9, 'compiled' 0.3 (Caffe allocates its blobs once, at set-up).
- 'plain': what a straightforward nn.Module does: ReLU in place where Caffe computes it in
  place, and each blob let go after the last layer that reads it.
- 'channels_last': 'plain' with activations and weights in NHWC, the layout oneDNN's
  convolutions take and give directly; NCHW tensors are reordered to and from its blocked
  layout around every convolution.
- 'compiled': 'plain' through torch.compile with inductor's freezing: weights reordered
  for oneDNN once, not in every pass, and the buffers planned ahead. Compiling takes tens
  of seconds, on the first call.
"""

import torch
import torch.nn.functional as F

from bench.nets import conv_geometry, in_phase, param_mults
from fcn.prototxt import caffe_pb2

FORMS = ('layers', 'plain', 'channels_last', 'compiled')


class Step:
    """One layer, ready to run: its bottoms, top, parameter keys and function
    fn(bottoms, params, training); for Caffe's in-place ReLU (top is bottom) also
    in_place_fn(bottom), which overwrites its argument."""

    def __init__(self, layer, fn, keys):
        self.name, self.type = layer.name, layer.type
        self.bottoms, self.top = tuple(layer.bottom), layer.top[0]
        self.fn, self.keys = fn, tuple(keys)
        in_place = self.bottoms == (self.top,)
        self.in_place_fn = getattr(fn, 'in_place', None) if in_place else None
        # Tops that may be (a view of) their first bottom's memory: a crop's slice, a
        # dropout's identity in the TEST phase, a one-term sum.
        self.may_alias = layer.type in ('Crop', 'Dropout', 'Eltwise')


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
        self.steps = []
        for layer in self.layers:
            keys = []
            while f'{layer.name}/{len(keys)}' in weights:
                index = len(keys)
                key = f'{layer.name}/{index}'
                lr_mult, decay_mult = param_mults(layer, index)
                self.params[key] = torch.nn.Parameter(torch.from_numpy(weights[key].copy()),
                                                      requires_grad=lr_mult > 0)
                self.mults[key] = (lr_mult, decay_mult)
                keys.append(key)
            self.steps.append(Step(layer, LAYERS[layer.type](layer), keys))
        # The last step reading each blob: after it, the 'plain' pass lets the blob go.
        self.last_reader = {name: index for index, step in enumerate(self.steps)
                            for name in step.bottoms}
        self.train(phase == pb.TRAIN)

    def forward(self, blobs):
        """The 'layers' form: each top a new tensor, every blob kept; autograd-safe."""
        blobs = dict(blobs)
        for step in self.steps:
            bottoms = [blobs[name] for name in step.bottoms]
            blobs[step.top] = step.fn(bottoms, [self.params[key] for key in step.keys],
                                      self.training)
        return blobs

    def plan(self, keep):
        """How the 'plain' form runs each step: (in place, blobs to let go after it).

        A ReLU that Caffe computes in place overwrites its bottom, unless that memory
        belongs to the caller's input or to another blob still to be read (a crop's source
        and the crop share it, where Caffe's blobs are separate). A blob goes after the last
        step that reads it, unless it is one of `keep`. Decided from the net alone, before
        any pass, so that a compiled pass sees constants only."""
        memory = {}  # blob name -> which tensor's memory its current value is

        def read_later(name, index):
            for step in self.steps[index + 1:]:
                if name in step.bottoms:
                    return True
                if step.top == name:
                    return False
            return name in keep

        steps = []
        for index, step in enumerate(self.steps):
            for name in step.bottoms:
                memory.setdefault(name, ('input', name))
            source = memory[step.bottoms[0]] if step.bottoms else None
            in_place = (step.in_place_fn is not None and source[0] != 'input'
                        and not any(held == source and read_later(name, index)
                                    for name, held in memory.items() if name != step.top))
            memory[step.top] = source if in_place or step.may_alias else ('step', index)
            drops = tuple(name for name in dict.fromkeys(step.bottoms)
                          if self.last_reader[name] == index and name != step.top
                          and name not in keep)
            steps.append((in_place, drops))
        return steps

    def infer(self, blobs, keep, plan=None):
        """The 'plain' form, for inference only (it overwrites tensors autograd would need):
        the `keep` blobs of a pass run as `plan` (default: self.plan(keep)) says."""
        blobs = dict(blobs)
        for step, (in_place, drops) in zip(self.steps, plan or self.plan(keep)):
            bottoms = [blobs[name] for name in step.bottoms]
            if in_place:
                top = step.in_place_fn(bottoms[0])
            else:
                top = step.fn(bottoms, [self.params[key] for key in step.keys], self.training)
            del bottoms
            for name in drops:
                del blobs[name]
            blobs[step.top] = top
        return {name: blobs[name] for name in keep}

    def losses(self, blobs):
        return sum(blobs[step.top] for step in self.steps if step.type in LOSSES)

    def param_groups(self, solver):
        """SGD parameter groups with Caffe's per-blob learning-rate and decay multipliers."""
        return [{'params': [param], 'lr': solver.base_lr * self.mults[key][0],
                 'weight_decay': solver.weight_decay * self.mults[key][1]}
                for key, param in self.params.items() if param.requires_grad]


class Inference(torch.nn.Module):
    """The net's forward pass in one of FORMS, returning the `outputs` blobs; call it under
    torch.inference_mode()."""

    def __init__(self, net, form, outputs):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f'no forward form {form!r}; the forms are {FORMS}')
        self.net, self.form, self.outputs = net.eval(), form, tuple(outputs)
        self.memory_format = (torch.channels_last if form == 'channels_last'
                              else torch.contiguous_format)
        if form == 'channels_last':
            self.net.to(memory_format=torch.channels_last)
        self.plan = self.net.plan(self.outputs)
        self.run = self._pass
        if form == 'compiled':
            import torch._inductor.config as inductor
            # Freezing treats the weights as constants: oneDNN's packed copies of the
            # convolution weights are made once, at compile time (fc6's are 411 MB, which
            # the eager forms reorder in every pass). It is a process-wide setting; a
            # worker runs this one pass.
            inductor.freezing = True
            self.run = torch.compile(self._pass)

    def _pass(self, blobs):
        if self.form == 'layers':
            blobs = self.net(blobs)
            return {name: blobs[name] for name in self.outputs}
        blobs = {name: tensor.contiguous(memory_format=self.memory_format)
                 if tensor.dim() == 4 else tensor for name, tensor in blobs.items()}
        return self.net.infer(blobs, self.outputs, self.plan)

    def forward(self, blobs):
        return self.run(blobs)


def _convolution(layer):
    kernel, stride, pad, dilation, group = conv_geometry(layer.convolution_param)
    if layer.type == 'Convolution':
        def convolution(bottoms, params, training):
            bias = params[1] if len(params) > 1 else None
            return F.conv2d(bottoms[0], params[0], bias, stride, pad, dilation, group)
        return convolution

    def deconvolution(bottoms, params, training):
        bias = params[1] if len(params) > 1 else None
        return F.conv_transpose2d(bottoms[0], params[0], bias, stride, pad, 0, group, dilation)
    return deconvolution


def _relu(layer):
    slope = layer.relu_param.negative_slope
    if slope:
        def leaky(bottoms, params, training):
            return F.leaky_relu(bottoms[0], slope)
        leaky.in_place = lambda bottom: F.leaky_relu_(bottom, slope)
        return leaky

    def relu(bottoms, params, training):
        return F.relu(bottoms[0])
    relu.in_place = F.relu_
    return relu


def _pooling(layer):
    pool = layer.pooling_param
    if pool.pool != caffe_pb2().PoolingParameter.MAX or pool.global_pooling:
        raise ValueError(f'layer {layer.name!r}: only MAX pooling over windows is supported')
    kernel = (pool.kernel_h, pool.kernel_w) if pool.kernel_h else pool.kernel_size
    stride = (pool.stride_h, pool.stride_w) if pool.stride_h else pool.stride
    pad = (pool.pad_h, pool.pad_w) if pool.pad_h else pool.pad
    # Caffe rounds the output size up and drops a last window that starts in the padding,
    # which is exactly PyTorch's ceil_mode.
    return lambda bottoms, params, training: F.max_pool2d(bottoms[0], kernel, stride, pad,
                                                          ceil_mode=True)


def _dropout(layer):
    ratio = layer.dropout_param.dropout_ratio
    return lambda bottoms, params, training: F.dropout(bottoms[0], ratio, training)


def _crop(layer):
    axis = layer.crop_param.axis
    offsets = list(layer.crop_param.offset) or [0]

    def crop(bottoms, params, training):
        source, reference = bottoms
        first = axis % source.dim()
        index = [slice(None)] * source.dim()
        for i in range(first, source.dim()):
            offset = offsets[0] if len(offsets) == 1 else offsets[i - first]
            index[i] = slice(offset, offset + reference.shape[i])
        return source[tuple(index)]
    return crop


def _eltwise(layer):
    eltwise = layer.eltwise_param
    modes = caffe_pb2().EltwiseParameter
    if eltwise.operation == modes.SUM:
        coeffs = list(eltwise.coeff)

        def total(bottoms, params, training):
            weights = coeffs or [1.0] * len(bottoms)
            terms = [c * b if c != 1 else b for c, b in zip(weights, bottoms)]
            result = terms[0]
            for term in terms[1:]:
                result = result + term
            return result
        return total
    if eltwise.operation == modes.PROD:
        return lambda bottoms, params, training: torch.stack(bottoms).prod(0)
    return lambda bottoms, params, training: torch.stack(bottoms).amax(0)


def _softmax_loss(layer):
    loss = layer.loss_param
    modes = caffe_pb2().LossParameter
    ignore = loss.ignore_label if loss.HasField('ignore_label') else -100
    if loss.HasField('normalization'):
        mode = loss.normalization
    elif loss.HasField('normalize'):
        mode = modes.VALID if loss.normalize else modes.BATCH_SIZE
    else:
        mode = modes.VALID

    def softmax_loss(bottoms, params, training):
        scores, label = bottoms
        target = label[:, 0].long()
        total = F.cross_entropy(scores, target, ignore_index=ignore, reduction='sum')
        normalizer = {modes.FULL: target.numel(),
                      modes.VALID: int((target != ignore).sum()),
                      modes.BATCH_SIZE: target.shape[0],
                      modes.NONE: 1}[mode]
        return total / max(1, normalizer)
    return softmax_loss


# Each Caffe layer type's builder: it reads the layer's parameters once and returns the
# step's function.
LAYERS = {
    'Convolution': _convolution, 'Deconvolution': _convolution, 'ReLU': _relu,
    'Pooling': _pooling, 'Dropout': _dropout, 'Crop': _crop, 'Eltwise': _eltwise,
    'SoftmaxWithLoss': _softmax_loss,
}
LOSSES = ('SoftmaxWithLoss',)
