"""A Caffe deploy net and its weights as an ONNX model (solve/export.py is the command).

The converter reads the net's definition (a NetParameter, as fcn.prototxt reads it) layer
by layer and writes the same computation in ONNX operators, opset OPSET, with the
parameter blobs as initializers. Height and width (and the batch) are left free: the
crops of the FCNs' skip and output layers take their sizes from the reference blob's
shape at run time, as Caffe's Crop does. The layers the project's deploy nets use are
written: Input, Convolution and Deconvolution (pad, stride, dilation, group), ReLU,
Pooling (MAX, rounded up as Caffe rounds its output size), LRN (across channels),
Concat, Crop, Eltwise, Scale (one bottom: a constant factor per channel), Dropout
(nothing at test time) and Softmax; any other layer is refused by name and type.

The model is checked (onnx.checker) before it is written, and written atomically.
"""
import os
from pathlib import Path

import numpy as np

from fcn.errors import UsageError

# ONNX Runtime 1.30 runs it, and OpenCV 5's ONNX importer reads it (OpenCV 4's refuses the
# crops' run-time shapes: it reads the Caffe files instead, fcn/runtimes.py).
OPSET = 17
# The names of the free input dimensions.
FREE_DIMS = ('batch', 'height', 'width')


class ExportError(UsageError):
    """A net the converter cannot write: the layer, its type, and what to do."""


def pair(values, single_h, single_w, default):
    """(h, w) of a Caffe spatial parameter: `<name>_h`/`<name>_w`, else the repeated
    field (one value for both, or two), else `default`."""
    if single_h or single_w:
        return int(single_h), int(single_w)
    values = list(values)
    if not values:
        return default, default
    return (int(values[0]), int(values[-1])) if len(values) <= 2 else None


class Converter:
    """One net's conversion: a method per Caffe layer type (LAYERS) adds its nodes."""

    def __init__(self, net_param, params):
        import onnx
        from onnx import helper, numpy_helper
        self.onnx, self.helper, self.numpy_helper = onnx, helper, numpy_helper
        self.net_param = net_param
        self.params = params
        self.nodes, self.initializers, self.inputs = [], [], []
        # Caffe blob name -> the ONNX value holding it now (in-place layers rename it).
        self.current = {}
        self.used_names = set()

    def unique(self, name):
        candidate, count = name, 0
        while candidate in self.used_names:
            count += 1
            candidate = f'{name}_{count}'
        self.used_names.add(candidate)
        return candidate

    def constant(self, name, array):
        value_name = self.unique(name)
        self.initializers.append(
            self.numpy_helper.from_array(np.ascontiguousarray(array), value_name))
        return value_name

    def node(self, op, inputs, output, name, **attributes):
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=name, **attributes))
        return output

    def bottom(self, layer, index=0):
        blob = layer.bottom[index]
        if blob not in self.current:
            raise ExportError(f'layer {layer.name} ({layer.type}) takes blob {blob}, which no '
                              f'earlier layer makes: the net definition is out of order')
        return self.current[blob]

    def top(self, layer, index=0):
        """A fresh ONNX name for the layer's top (its blob name, once taken)."""
        name = self.unique(layer.top[index])
        self.current[layer.top[index]] = name
        return name

    def blobs(self, layer, count):
        arrays = self.params.get(layer.name)
        if arrays is None or len(arrays) < count:
            raise ExportError(f'layer {layer.name} ({layer.type}) needs {count} parameter '
                              f'blobs and the weights give it {len(arrays or ())}: give '
                              f'weights trained for this net')
        return [np.asarray(a, np.float32) for a in arrays[:count]]

    def refuse(self, layer, why):
        raise ExportError(f'layer {layer.name} ({layer.type}): {why}; the ONNX export '
                          f'writes the layers of the project\'s deploy nets '
                          f'({", ".join(sorted(LAYERS))})')

    # ---- layers ------------------------------------------------------------------------

    def input_layer(self, layer):
        shapes = list(layer.input_param.shape)
        for index, blob in enumerate(layer.top):
            shape = shapes[min(index, len(shapes) - 1)] if shapes else None
            if shape is None or len(shape.dim) != 4:
                self.refuse(layer, f'top {blob} is not given as N x C x H x W')
            channels = int(shape.dim[1])
            name = self.top(layer, index)
            self.inputs.append(self.helper.make_tensor_value_info(
                name, self.onnx.TensorProto.FLOAT,
                [FREE_DIMS[0], channels, FREE_DIMS[1], FREE_DIMS[2]]))

    def convolution_attributes(self, layer):
        p = layer.convolution_param
        kernel = pair(p.kernel_size, p.kernel_h, p.kernel_w, None)
        stride = pair(p.stride, p.stride_h, p.stride_w, 1)
        pad = pair(p.pad, p.pad_h, p.pad_w, 0)
        dilation = pair(p.dilation, 0, 0, 1)
        if None in (kernel, stride, pad, dilation) or p.axis != 1:
            self.refuse(layer, 'only 2-d convolutions over axis 1 are written')
        return dict(kernel_shape=list(kernel), strides=list(stride),
                    pads=[pad[0], pad[1], pad[0], pad[1]], dilations=list(dilation),
                    group=int(p.group))

    def convolution(self, layer, op='Conv'):
        attributes = self.convolution_attributes(layer)
        bias = layer.convolution_param.bias_term
        arrays = self.blobs(layer, 2 if bias else 1)
        inputs = [self.bottom(layer), self.constant(f'{layer.name}.weight', arrays[0])]
        if bias:
            inputs.append(self.constant(f'{layer.name}.bias', arrays[1].reshape(-1)))
        self.node(op, inputs, self.top(layer), layer.name, **attributes)

    def deconvolution(self, layer):
        self.convolution(layer, 'ConvTranspose')

    def relu(self, layer):
        slope = layer.relu_param.negative_slope
        if slope:
            self.node('LeakyRelu', [self.bottom(layer)], self.top(layer), layer.name,
                      alpha=float(slope))
        else:
            self.node('Relu', [self.bottom(layer)], self.top(layer), layer.name)

    def pooling(self, layer):
        p = layer.pooling_param
        if p.pool != p.MAX:
            self.refuse(layer, 'only MAX pooling is written')
        if p.global_pooling:
            self.node('GlobalMaxPool', [self.bottom(layer)], self.top(layer), layer.name)
            return
        kernel = pair([p.kernel_size] if p.kernel_size else [], p.kernel_h, p.kernel_w, None)
        stride = pair([p.stride], p.stride_h, p.stride_w, 1)
        pad = pair([p.pad], p.pad_h, p.pad_w, 0)
        if kernel is None:
            self.refuse(layer, 'no kernel size')
        # Caffe rounds the output size up; a window starting in the padding is dropped,
        # as ONNX's ceil_mode does.
        self.node('MaxPool', [self.bottom(layer)], self.top(layer), layer.name,
                  kernel_shape=list(kernel), strides=list(stride),
                  pads=[pad[0], pad[1], pad[0], pad[1]], ceil_mode=1)

    def lrn(self, layer):
        p = layer.lrn_param
        if p.norm_region != p.ACROSS_CHANNELS:
            self.refuse(layer, 'only LRN across channels is written')
        self.node('LRN', [self.bottom(layer)], self.top(layer), layer.name,
                  size=int(p.local_size), alpha=float(p.alpha), beta=float(p.beta),
                  bias=float(p.k))

    def concat(self, layer):
        p = layer.concat_param
        axis = p.axis if p.HasField('axis') or not p.HasField('concat_dim') else p.concat_dim
        inputs = [self.bottom(layer, i) for i in range(len(layer.bottom))]
        self.node('Concat', inputs, self.top(layer), layer.name, axis=int(axis))

    def crop(self, layer):
        p = layer.crop_param
        axis = p.axis if p.axis >= 0 else 4 + p.axis
        dims = 4 - axis
        offsets = list(p.offset) or [0]
        if len(offsets) == 1:
            offsets = offsets * dims
        if len(offsets) != dims:
            self.refuse(layer, f'{len(offsets)} offsets for {dims} axes')
        data, reference = self.bottom(layer, 0), self.bottom(layer, 1)
        starts = np.array(offsets, np.int64)
        shape = self.node('Shape', [reference], self.unique(f'{layer.name}.shape'),
                          f'{layer.name}.shape', start=int(axis))
        ends = self.node('Add', [shape, self.constant(f'{layer.name}.starts', starts)],
                         self.unique(f'{layer.name}.ends'), f'{layer.name}.ends')
        self.node('Slice', [data, self.constant(f'{layer.name}.starts', starts), ends,
                            self.constant(f'{layer.name}.axes',
                                          np.arange(axis, 4, dtype=np.int64))],
                  self.top(layer), layer.name)

    def eltwise(self, layer):
        p = layer.eltwise_param
        inputs = [self.bottom(layer, i) for i in range(len(layer.bottom))]
        if p.operation == p.PROD:
            op = 'Mul'
        elif p.operation == p.MAX:
            op = 'Max'
        else:
            op = 'Sum'
            coeffs = list(p.coeff)
            if coeffs and len(coeffs) != len(inputs):
                self.refuse(layer, f'{len(coeffs)} coefficients for {len(inputs)} bottoms')
            if any(c != 1 for c in coeffs):
                inputs = [value if c == 1 else self.node(
                    'Mul', [value, self.constant(f'{layer.name}.coeff{i}',
                                                 np.array(c, np.float32))],
                    self.unique(f'{layer.name}.term{i}'), f'{layer.name}.term{i}')
                    for i, (value, c) in enumerate(zip(inputs, coeffs))]
        self.node(op, inputs, self.top(layer), layer.name)

    def scale(self, layer):
        p = layer.scale_param
        if len(layer.bottom) != 1 or p.axis != 1 or p.num_axes != 1:
            self.refuse(layer, 'only a learned factor per channel (one bottom, axis 1) is '
                               'written')
        arrays = self.blobs(layer, 2 if p.bias_term else 1)
        factor = self.constant(f'{layer.name}.scale', arrays[0].reshape(1, -1, 1, 1))
        if not p.bias_term:
            self.node('Mul', [self.bottom(layer), factor], self.top(layer), layer.name)
            return
        scaled = self.node('Mul', [self.bottom(layer), factor],
                           self.unique(f'{layer.name}.scaled'), f'{layer.name}.scaled')
        self.node('Add', [scaled, self.constant(f'{layer.name}.bias',
                                                arrays[1].reshape(1, -1, 1, 1))],
                  self.top(layer), layer.name)

    def dropout(self, layer):
        self.node('Identity', [self.bottom(layer)], self.top(layer), layer.name)

    def softmax(self, layer):
        self.node('Softmax', [self.bottom(layer)], self.top(layer), layer.name,
                  axis=int(layer.softmax_param.axis))

    # ---- the net -----------------------------------------------------------------------

    def model(self, graph_name):
        produced = []
        for layer in self.net_param.layer:
            if any(rule.HasField('phase') and rule.phase != 1 for rule in layer.include):
                continue  # a training-phase layer
            method = LAYERS.get(layer.type)
            if method is None:
                self.refuse(layer, 'this layer type is not written')
            for blob in layer.bottom:
                if blob in produced and blob not in layer.top:
                    produced.remove(blob)
            getattr(self, method)(layer)
            produced += [blob for blob in layer.top if blob not in produced]
        if not self.inputs:
            raise ExportError('the net has no Input layer: give a deploy net')
        input_blobs = {value.name for value in self.inputs}
        outputs = [self.helper.make_tensor_value_info(self.current[blob],
                                                      self.onnx.TensorProto.FLOAT,
                                                      [FREE_DIMS[0], None, None, None])
                   for blob in produced if self.current[blob] not in input_blobs]
        graph = self.helper.make_graph(self.nodes, graph_name, self.inputs, outputs,
                                       self.initializers)
        model = self.helper.make_model(
            graph, opset_imports=[self.helper.make_opsetid('', OPSET)],
            producer_name='fcn solve/export.py')
        # Readable by runtimes that know IR version 8 (onnxruntime >= 1.14, OpenCV 4.x).
        model.ir_version = 8
        return model


LAYERS = {'Input': 'input_layer', 'Convolution': 'convolution',
          'Deconvolution': 'deconvolution', 'ReLU': 'relu', 'Pooling': 'pooling',
          'LRN': 'lrn', 'Concat': 'concat', 'Crop': 'crop', 'Eltwise': 'eltwise',
          'Scale': 'scale', 'Dropout': 'dropout', 'Softmax': 'softmax'}


def to_onnx(net_param, params, graph_name='fcn'):
    """The ONNX model (checked) of a deploy net's definition and its parameters
    ({layer name: [arrays in Caffe's blob order]}). Output names are the net's output
    blobs' names."""
    import onnx
    model = Converter(net_param, params).model(graph_name)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f'the ONNX model of {graph_name} fails onnx.checker ({error})') \
            from None
    return model


def net_params(net):
    """{layer name: [arrays]} of a caffe.Net's parameter blobs."""
    return {name: [np.array(blob.data) for blob in blobs] for name, blobs in net.params.items()}


def save(model, path):
    """Write an ONNX model atomically."""
    import onnx
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    try:
        onnx.save_model(model, str(tmp))
        os.replace(tmp, path)
    except OSError as error:
        raise ExportError(f'cannot write {path} ({error.strerror or error}): choose a '
                          f'writable place with room for the model') from None
    finally:
        tmp.unlink(missing_ok=True)


def export(prototxt, weights, out, allow_missing_layers=False):
    """Write the ONNX model of a deploy prototxt with a weights file (loaded and checked
    by fcn.nets.load_net, so Caffe is needed) to `out`; returns the model."""
    from fcn import nets
    from fcn.prototxt import read_net
    net_param = read_net(prototxt)
    net = nets.load_net(prototxt, weights, allow_missing_layers=allow_missing_layers,
                        net_param=net_param)
    model = to_onnx(net_param, net_params(net), Path(prototxt).parent.name)
    save(model, out)
    return model
