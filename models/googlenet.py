"""GoogLeNet nets (Szegedy et al., ILSVRC 2014): FCN-GoogLeNet and the classifier.

The classifier is BVLC GoogLeNet as Caffe's model zoo defines it (bvlc_googlenet), with
its layer names: a 7x7/2 convolution, 3x3/2 max pooling, LRN, 1x1 and 3x3 convolutions,
LRN, and nine inception modules in three groups between 3x3/2 max poolings, each module
four branches (1x1; 1x1 then 3x3; 1x1 then 5x5; 3x3/1 max pooling then 1x1) concatenated
along channels; then 7x7 average pooling, dropout 0.4 and the 1000-way InnerProduct
`loss3/classifier`. The auxiliary classifiers of training are not part of it.

FCN-GoogLeNet is the paper's adaptation (Long et al., CVPR 2015, section 4.1): the final
average pooling and the auxiliary heads dropped, the classifier replaced by a 1x1 score
convolution on the last module's output (stride 32), one fixed bilinear upsampling and a
crop to the input whose offset `models.coord` derives through the Concat layers. Its
choices beyond the paper are in models/README.md (section FCN-GoogLeNet).
"""
import caffe
from caffe import layers as L, params as P

from models import parts

# Each module: name, then the outputs of its 1x1 branch, of the 3x3 branch's 1x1
# reduction and 3x3 convolution, of the 5x5 branch's reduction and 5x5 convolution, and
# of the pooling branch's 1x1 projection. A 3x3/2 max pooling precedes each group.
MODULE_GROUPS = (
    (3, (('3a', 64, 96, 128, 16, 32, 32),
         ('3b', 128, 128, 192, 32, 96, 64))),
    (4, (('4a', 192, 96, 208, 16, 48, 64),
         ('4b', 160, 112, 224, 24, 64, 64),
         ('4c', 128, 128, 256, 24, 64, 64),
         ('4d', 112, 144, 288, 32, 64, 64),
         ('4e', 256, 160, 320, 32, 128, 128))),
    (5, (('5a', 256, 160, 320, 32, 128, 128),
         ('5b', 384, 192, 384, 48, 128, 128))),
)
CLASSIFIER_PAD = 3
# The FCN pads conv1 by 15 more pixels: the least with which every layer of a 1x1 input
# stays non-empty (each of the four 3x3/2 max poolings needs an input of at least two
# pixels, so conv1's output needs 16), and any input size is scored. More padding would
# only cost computation on zeros.
FCN_PAD = CLASSIFIER_PAD + 15
DROPOUT_RATIO = 0.4
# Caffe's 3x3/2 poolings put output pixels over whole input pixels, not between them, so
# the upsampling kernel has an odd size (2 * 32 - 1) and centres on a whole pixel too, as
# FCN-AlexNet's does; with 64 the crop offset would be fractional.
UPSCORE_KERNEL = 63


def lrn(bottom):
    return L.LRN(bottom, local_size=5, alpha=1e-4, beta=0.75)


def inception(n, spec, bottom, name, n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5,
              pool_proj):
    """One inception module named `inception_<name>`; returns its concatenated output."""
    prefix = f'inception_{name}/'

    def conv(layer, bottom, nout, ks, pad=0):
        return parts.conv_relu(n, prefix + layer, prefix + 'relu_' + layer, bottom,
                               parts.scaled(nout, spec.width), ks, parts.LEARNED,
                               spec.weight_filler, **(dict(pad=pad) if pad else {}))

    branches = [conv('1x1', bottom, n1x1, 1)]
    reduced = conv('3x3_reduce', bottom, n3x3_reduce, 1)
    branches.append(conv('3x3', reduced, n3x3, 3, pad=1))
    reduced = conv('5x5_reduce', bottom, n5x5_reduce, 1)
    branches.append(conv('5x5', reduced, n5x5, 5, pad=2))
    n[prefix + 'pool'] = L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=3, stride=1,
                                   pad=1)
    branches.append(conv('pool_proj', n[prefix + 'pool'], pool_proj, 1))
    n[prefix + 'output'] = L.Concat(*branches)
    return n[prefix + 'output']


def body(n, spec, image, conv1_pad):
    """conv1/7x7_s2 to inception_5b/output; returns that top (stride 32)."""
    top = parts.conv_relu(n, 'conv1/7x7_s2', 'conv1/relu_7x7', image,
                          parts.scaled(64, spec.width), 7, parts.LEARNED, spec.weight_filler,
                          pad=conv1_pad, stride=2)
    n['pool1/3x3_s2'] = parts.max_pool(top, 3, 2)
    n['pool1/norm1'] = lrn(n['pool1/3x3_s2'])
    top = parts.conv_relu(n, 'conv2/3x3_reduce', 'conv2/relu_3x3_reduce', n['pool1/norm1'],
                          parts.scaled(64, spec.width), 1, parts.LEARNED, spec.weight_filler)
    top = parts.conv_relu(n, 'conv2/3x3', 'conv2/relu_3x3', top,
                          parts.scaled(192, spec.width), 3, parts.LEARNED, spec.weight_filler,
                          pad=1)
    n['conv2/norm2'] = lrn(top)
    top = n['conv2/norm2']
    for group, modules in MODULE_GROUPS:
        pool = f'pool{group - 1}/3x3_s2'
        n[pool] = parts.max_pool(top, 3, 2)
        top = n[pool]
        for module in modules:
            top = inception(n, spec, top, *module)
    return top


def fcn(spec, variant):
    """FCN-GoogLeNet for a variant ('train', 'val' or 'deploy') as a NetParameter."""
    n = caffe.NetSpec()
    image, = parts.inputs(n, spec, variant).values()
    top = body(n, spec, image, FCN_PAD)
    # The classifier's dropout, now on the features the score layer reads.
    top = parts.dropout(n, 'inception_5b/drop', top, variant, ratio=DROPOUT_RATIO)
    return parts.single_head_fcn(n, spec, variant, top, image, UPSCORE_KERNEL)


def classifier(spec, variant):
    """The GoogLeNet classifier: 7x7 average pooling and InnerProduct loss3/classifier."""
    n = caffe.NetSpec()
    image, = parts.inputs(n, spec, variant).values()
    top = body(n, spec, image, CLASSIFIER_PAD)
    n['pool5/7x7_s1'] = L.Pooling(top, pool=P.Pooling.AVE, kernel_size=7, stride=1)
    top = parts.dropout(n, 'pool5/drop_7x7_s1', n['pool5/7x7_s1'], variant,
                        ratio=DROPOUT_RATIO)
    parts.classifier_head(n, spec, variant, top, parts.LEARNED, spec.weight_filler)
    return parts.to_proto(n)
