"""CaffeNet nets (AlexNet with pooling before normalisation): FCN-AlexNet and the classifier.

As in the reference release, the body's layers carry no learning-rate multipliers (only
the score layer does), conv1 (11x11, stride 4) is padded by 100 in the FCN, fc6 becomes a
6x6 convolution, and the single upsampling has a 63x63 kernel of stride 32.
"""
import caffe
from caffe import layers as L

from models import parts

FCN_PAD = 100
CLASSIFIER_PAD = 0
UPSCORE_KERNEL = 63


def norm(bottom):
    return L.LRN(bottom, local_size=5, alpha=1e-4, beta=0.75)


def body(n, spec, image, conv1_pad):
    """conv1 to pool5: grouped convolutions, 3x3 pools of stride 2, LRN after pool1/2."""
    def conv(index, bottom, nout, ks, pad, group, stride=1):
        return parts.conv_relu(n, f'conv{index}', f'relu{index}', bottom,
                               parts.scaled(nout, spec.width), ks, None, spec.weight_filler,
                               pad=pad, group=group, stride=stride)

    top = conv(1, image, 96, 11, conv1_pad, 1, stride=4)
    n.pool1 = parts.max_pool(top, 3, 2)
    n.norm1 = norm(n.pool1)
    top = conv(2, n.norm1, 256, 5, 2, 2)
    n.pool2 = parts.max_pool(top, 3, 2)
    n.norm2 = norm(n.pool2)
    top = conv(3, n.norm2, 384, 3, 1, 1)
    top = conv(4, top, 384, 3, 1, 2)
    top = conv(5, top, 256, 3, 1, 2)
    n.pool5 = parts.max_pool(top, 3, 2)
    return n.pool5


def fcn(spec, variant):
    """FCN-AlexNet for a variant ('train', 'val' or 'deploy') as a NetParameter."""
    n = caffe.NetSpec()
    image, = parts.inputs(n, spec, variant).values()
    pool5 = body(n, spec, image, FCN_PAD)
    fc_outputs = parts.scaled(parts.FC_OUTPUTS, spec.width)
    top = parts.conv_relu(n, 'fc6', 'relu6', pool5, fc_outputs, 6, None, spec.weight_filler,
                          pad=0, group=1, stride=1)
    top = parts.dropout(n, 'drop6', top, variant)
    top = parts.conv_relu(n, 'fc7', 'relu7', top, fc_outputs, 1, None, spec.weight_filler,
                          pad=0, group=1, stride=1)
    top = parts.dropout(n, 'drop7', top, variant)
    return parts.single_head_fcn(n, spec, variant, top, image, UPSCORE_KERNEL)


def classifier(spec, variant):
    """The CaffeNet classifier: InnerProduct fc6/fc7/fc8 on an unpadded conv1."""
    n = caffe.NetSpec()
    image, = parts.inputs(n, spec, variant).values()
    pool5 = body(n, spec, image, CLASSIFIER_PAD)
    return parts.fc_classifier(n, spec, variant, pool5, None)
