"""VGG16 nets (Simonyan and Zisserman, ILSVRC 2014): the FCNs and the classifier.

One FCN builder makes every VGG16 FCN of the model table: FCN-32s, 16s and 8s heads, the
at-once skip scaling, several heads on one body (SIFT Flow), a 4-channel first layer on
colour and depth (NYUD early fusion) and one body per modality with averaged scores (NYUD
late fusion), all at any width. The classifier has the same layer names up to fc7, so
that surgery transplants its weights into the FCNs (fc6/fc7 InnerProducts become 7x7 and
1x1 convolutions).
"""
import caffe
from caffe import layers as L, params as P

from models import parts

# Output channels of the 3x3 convolutions of the five blocks; each block ends in a
# 2x2 max pooling of stride 2.
BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# The FCN pads conv1_1 by 100 so that any input, even 1x1, leaves fc6 (7x7 on pool5)
# an output and the upsampled score still covers the input to be cropped to it.
FCN_PAD = 100
FC6_KERNEL = 7
CLASSIFIER_PAD = 1


def fcn_pad(fc6_kernel):
    """conv1_1's pad for an fc6 of another kernel size: each pool5 cell fc6 spans less
    takes 32 pixels of pad, half on either side, so the net's geometry (score sizes,
    crop offsets) stays that of the 7x7 fc6 padded by 100."""
    return FCN_PAD - (FC6_KERNEL - fc6_kernel) * 32 // 2


def body(n, spec, image, conv1_1_pad, suffix=''):
    """conv1_1 to pool5 with in-place ReLUs; returns the pool tops by name."""
    pools = {}
    bottom = image
    for block, outputs in enumerate(BLOCKS, 1):
        for index, nout in enumerate(outputs, 1):
            first = block == index == 1
            name = spec.first_conv if first else f'conv{block}_{index}'
            bottom = parts.conv_relu(
                n, name + suffix, f'relu{block}_{index}' + suffix, bottom,
                parts.scaled(nout, spec.width), 3, parts.LEARNED, spec.weight_filler,
                pad=conv1_1_pad if first else 1, stride=1)
        n[f'pool{block}' + suffix] = parts.max_pool(bottom, 2, 2)
        bottom = pools[f'pool{block}'] = n[f'pool{block}' + suffix]
    return pools


def fcn_features(n, spec, variant, image, suffix=''):
    """The body and fc6/fc7 as convolutions; returns the fc7 top and the pools."""
    pools = body(n, spec, image, fcn_pad(spec.fc6_kernel), suffix)
    fc_outputs = parts.scaled(parts.FC_OUTPUTS, spec.width)
    top = parts.conv_relu(n, 'fc6' + suffix, 'relu6' + suffix, pools['pool5'], fc_outputs,
                          spec.fc6_kernel, parts.LEARNED, spec.weight_filler, pad=0,
                          stride=1)
    top = parts.dropout(n, 'drop6' + suffix, top, variant)
    top = parts.conv_relu(n, 'fc7' + suffix, 'relu7' + suffix, top, fc_outputs,
                          1, parts.LEARNED, spec.weight_filler, pad=0, stride=1)
    return parts.dropout(n, 'drop7' + suffix, top, variant), pools


def fcn(spec, variant):
    """The VGG16 FCN of `spec` for a variant ('train', 'val' or 'deploy') as a NetParameter."""
    n = caffe.NetSpec()
    images = parts.inputs(n, spec, variant)
    if spec.fusion == 'late':
        # One body per modality, names suffixed by it (conv1_1color, ...); their coarse
        # scores are averaged, then upsampled as one.
        head, = spec.heads
        if spec.stride != 32:
            raise ValueError(f'{spec.name}: late fusion is defined for stride 32 only')
        scores = []
        for modality, image in images.items():
            features, _ = fcn_features(n, spec, variant, image, suffix=modality)
            n['score_fr' + modality] = parts.score_conv(features, head.num_classes)
            scores.append(n['score_fr' + modality])
        n.score_fused = L.Eltwise(*scores, operation=P.Eltwise.SUM,
                                  coeff=[1 / len(scores)] * len(scores))
        parts.segmentation_head(n, spec, variant, 0, head, n.score_fused, {},
                                crop_to=next(iter(images.values())))
    else:
        if spec.fusion == 'early':
            n.data = L.Concat(*images.values())
        features, pools = fcn_features(n, spec, variant, n.data)
        for index, head in enumerate(spec.heads):
            score_fr = 'score_fr' + parts.head_suffix(head)
            n[score_fr] = parts.score_conv(features, head.num_classes)
            parts.segmentation_head(n, spec, variant, index, head, n[score_fr], pools,
                                    crop_to=n.data)
    return parts.to_proto(n)


def classifier(spec, variant):
    """The VGG16 classifier: 3x3 convolutions padded by 1, InnerProduct fc6/fc7/fc8."""
    n = caffe.NetSpec()
    image, = parts.inputs(n, spec, variant).values()
    pools = body(n, spec, image, CLASSIFIER_PAD)
    return parts.fc_classifier(n, spec, variant, pools['pool5'], parts.LEARNED)
