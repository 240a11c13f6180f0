"""The reference table: every net of the project as data, one entry per folder
`models/<name>/`.

`MODELS` holds the fifteen reference FCNs of Long, Shelhamer and Darrell (CVPR 2015,
PAMI 2016) and the toy nets of the embedded demo; each gets train, val, deploy and solver
prototxts. `BASE_NETS` holds the ILSVRC classifiers that surgery starts from; they get a
deploy prototxt only. The builders (`models/vgg16.py`, `models/alexnet.py`) read nothing
but these entries, and `make models` writes their output.

Only `caffe`-free Python lives here, so any tool can read the table without Caffe. The
models a user declares (models/declared.py) join these in models/registry.py, the table
the tools read; nothing here reads a user's file.
"""
from models.records import Head, ModelSpec, data_layer


# ---- reference models --------------------------------------------------------------
# Data directories are relative to the data root (FCN_DATA_DIR, else <repo>/data).

VOC_MEAN = (104.00699, 116.66877, 122.67892)

# PASCAL VOC: train on SBD's train split, evaluate on seg11valid (VOC2011 segmentation val
# without the SBD training images).
VOC = dict(
    dataset='voc', heads=(Head('score', 'label', 21),),
    train_split='train', val_split='seg11valid', val_size=736, test_every=4000,
    train_data=data_layer('layers.voc.SBDDSegDataLayer', sbdd_dir='sbdd/dataset',
                          mean=VOC_MEAN),
    val_data=data_layer('layers.voc.VOCSegDataLayer', voc_dir='pascal/VOC2011',
                        mean=VOC_MEAN))

NYUD_LAYER = data_layer('layers.nyud.NYUDSegDataLayer', nyud_dir='nyud')
# NYUDv2, the 40-class task of Gupta et al.; the images are 425x560 after their crop.
NYUD = dict(
    dataset='nyud', heads=(Head('score', 'label', 40),),
    train_split='trainval', val_split='test', val_size=654, test_every=2000, snapshot=2000,
    iterations=50 * 2000,
    train_data=NYUD_LAYER, val_data=NYUD_LAYER, deploy_size=(425, 560))

SIFTFLOW_LAYER = data_layer('layers.siftflow.SIFTFlowSegDataLayer', siftflow_dir='sift-flow')
# SIFT Flow: one body, two heads (33 semantic, 3 geometric classes) on 256x256 images.
SIFTFLOW = dict(
    dataset='siftflow',
    heads=(Head('score_sem', 'sem', 33, ignore_absent=True), Head('score_geo', 'geo', 3)),
    train_split='trainval', val_split='test', val_size=200, test_every=2000, snapshot=0,
    iterations=50 * 2000,
    train_data=SIFTFLOW_LAYER, val_data=SIFTFLOW_LAYER, deploy_size=(256, 256))

PASCALCONTEXT_LAYER = data_layer(
    'layers.pascalcontext.PASCALContextSegDataLayer', voc_dir='pascal/VOC2010',
    context_dir='pascal-context', mean=VOC_MEAN)
# PASCAL-Context, 59 classes and background, on VOC2010 images.
PASCALCONTEXT = dict(
    dataset='pascalcontext', heads=(Head('score', 'label', 60),),
    train_split='train', val_split='val', val_size=5105, test_every=8000,
    iterations=50 * 8000,
    train_data=PASCALCONTEXT_LAYER, val_data=PASCALCONTEXT_LAYER)

# Unnormalised losses sum over ~10^5 pixels, hence the tiny learning rates; each finer
# stride starts from the coarser net and takes a 100x smaller rate.
HIGH_MOMENTUM = dict(momentum=0.99, iter_size=1)
# The reference's solve scripts loop `solver.step(test_every)` and score in between; Caffe's
# step() ignores max_iter, so `iterations` (K x test_every) is what they ran, whatever the
# solver file says: VOC 25 x 4000 (at once 75 x 4000), NYUD and SIFT Flow 50 x 2000,
# PASCAL-Context 50 x 8000.
VOC_RUN = 25 * 4000

REFERENCE_MODELS = (
    ModelSpec('voc-fcn32s', body='vgg16', stride=32, init='vgg16-fcn', **VOC,
              base_lr=1e-10, max_iter=100000, iterations=VOC_RUN, **HIGH_MOMENTUM),
    ModelSpec('voc-fcn16s', body='vgg16', stride=16, init='voc-fcn32s', **VOC,
              base_lr=1e-12, max_iter=100000, iterations=VOC_RUN, **HIGH_MOMENTUM),
    ModelSpec('voc-fcn8s', body='vgg16', stride=8, init='voc-fcn16s', **VOC,
              base_lr=1e-14, max_iter=100000, iterations=VOC_RUN, **HIGH_MOMENTUM),
    # All strides learnt at once: the skips' inputs are scaled down so that their scores
    # start small against the coarse score's.
    ModelSpec('voc-fcn8s-atonce', body='vgg16', stride=8, init='vgg16-fcn', **VOC,
              skip_scales=(0.01, 0.0001),
              base_lr=1e-10, max_iter=300000, iterations=75 * 4000, **HIGH_MOMENTUM),
    # CaffeNet body, normalised loss, standard momentum, 20 images per update.
    ModelSpec('voc-fcn-alexnet', body='alexnet', stride=32, init='alexnet-fcn', **VOC,
              normalize_loss=True,
              base_lr=1e-4, momentum=0.9, iter_size=20, max_iter=100000,
              iterations=VOC_RUN),

    ModelSpec('nyud-fcn32s-color', body='vgg16', stride=32, init='vgg16-fcn', **NYUD,
              modalities=('color',),
              base_lr=1e-10, max_iter=300000, **HIGH_MOMENTUM),
    ModelSpec('nyud-fcn32s-hha', body='vgg16', stride=32, init='vgg16-fcn', **NYUD,
              modalities=('hha',),
              base_lr=1e-10, max_iter=300000, **HIGH_MOMENTUM),
    ModelSpec('nyud-fcn32s-color-d', body='vgg16', stride=32, init='vgg16-fcn', **NYUD,
              modalities=('color', 'depth'), fusion='early', first_conv='conv1_1_bgrd',
              base_lr=1e-10, max_iter=300000, **HIGH_MOMENTUM),
    ModelSpec('nyud-fcn32s-color-hha', body='vgg16', stride=32,
              init=('nyud-fcn32s-color', 'nyud-fcn32s-hha'), init_snapshots=(28000, 60000),
              **NYUD, modalities=('color', 'hha'), fusion='late',
              base_lr=1e-12, max_iter=300000, **HIGH_MOMENTUM),

    ModelSpec('siftflow-fcn32s', body='vgg16', stride=32, init='vgg16-fcn', **SIFTFLOW,
              base_lr=1e-10, max_iter=300000, **HIGH_MOMENTUM),
    ModelSpec('siftflow-fcn16s', body='vgg16', stride=16, init='siftflow-fcn32s', **SIFTFLOW,
              base_lr=1e-12, max_iter=300000, **HIGH_MOMENTUM),
    ModelSpec('siftflow-fcn8s', body='vgg16', stride=8, init='siftflow-fcn16s', **SIFTFLOW,
              base_lr=1e-12, max_iter=300000, **HIGH_MOMENTUM),

    ModelSpec('pascalcontext-fcn32s', body='vgg16', stride=32, init='vgg16-fcn',
              **PASCALCONTEXT, base_lr=1e-10, max_iter=300000, **HIGH_MOMENTUM),
    ModelSpec('pascalcontext-fcn16s', body='vgg16', stride=16, init='pascalcontext-fcn32s',
              **PASCALCONTEXT, base_lr=1e-12, max_iter=300000, **HIGH_MOMENTUM),
    ModelSpec('pascalcontext-fcn8s', body='vgg16', stride=8, init='pascalcontext-fcn16s',
              **PASCALCONTEXT, base_lr=1e-14, max_iter=300000, **HIGH_MOMENTUM),
)


# ---- FCN-GoogLeNet: the paper's third net, never released -------------------------
# The paper's recipe for it (CVPR 2015, section 4.3): SGD, momentum 0.9, 20 images per
# update, fixed rate 5e-5; with the loss averaged over pixels, as FCN-AlexNet's. Why, and
# why 100000 updates: models/README.md, section FCN-GoogLeNet.

PAPER_MODELS = (
    ModelSpec('voc-fcn-googlenet', body='googlenet', stride=32, init='googlenet-fcn', **VOC,
              normalize_loss=True,
              base_lr=5e-5, momentum=0.9, iter_size=20, max_iter=100000),
)


# ---- toy models: the embedded demo (values tuned by the demo) ----------------------
# The VGG16 topology and layer names at an eighth of the width, on the toy set of
# data/toy.py: 128x128 scenes of objects of five hues on a near-grey background, and
# 128x128 images of one class for pretraining the classifier. Two departures keep the demo
# within minutes on a CPU: the classifier's 128x128 input makes pool5 4x4, so fc6 is 4x4
# (and conv1_1's pad shrinks with it, models/vgg16.py), and every toy net trains with
# Adam on a loss averaged over pixels, where SGD took thousands of iterations more.

TOY_WIDTH = 1 / 8
TOY_CLASSES = 6  # background + 5 hues; the classifier uses the same ids (0 never occurs)
# Mid-grey: the toy scenes are mostly near-grey background, around 128 in every channel.
TOY_MEAN = (128.0, 128.0, 128.0)
TOY = dict(dataset='toy', body='vgg16', width=TOY_WIDTH, fc6_kernel=4,
           train_split='train', val_split='val', normalize_loss=True, solver_type='Adam',
           lr_policy='poly', power=1.0, weight_decay=0.0,
           momentum=0.9, iter_size=1, snapshot=500, test_every=500, random_seed=1337)
TOY_SEG_LAYER = data_layer('layers.voc.VOCSegDataLayer', voc_dir='toy', mean=TOY_MEAN)
TOY_FCN = dict(
    **TOY, heads=(Head('score', 'label', TOY_CLASSES),), val_size=120,
    train_data=TOY_SEG_LAYER, val_data=TOY_SEG_LAYER, deploy_size=(128, 128))
TOY_CLASS_LAYER = data_layer('layers.toy.ToyClassDataLayer', toy_dir='toy', mean=TOY_MEAN)

TOY_MODELS = (
    ModelSpec('toy-vgg16', task='classification', stride=32, **TOY,
              heads=(Head('fc8', 'label', TOY_CLASSES),), init=None, val_size=500,
              train_data=TOY_CLASS_LAYER, val_data=TOY_CLASS_LAYER,
              deploy_size=(128, 128), batch_size=32, weight_filler='xavier',
              base_lr=5e-4, max_iter=500),
    ModelSpec('toy-fcn32s', stride=32, init='toy-vgg16-fcn', **TOY_FCN,
              base_lr=3e-4, max_iter=4000),
    ModelSpec('toy-fcn16s', stride=16, init='toy-fcn32s', **TOY_FCN,
              base_lr=3e-4, max_iter=1500),
    ModelSpec('toy-fcn8s', stride=8, init='toy-fcn16s', **TOY_FCN,
              base_lr=3e-4, max_iter=2000),
)


# ---- ILSVRC classifiers (deploy only) ----------------------------------------------
# The definitions that surgery reads the ILSVRC weights with, named as the FCNs' layers.
# Their training fields are unused.

ILSVRC = dict(
    dataset='ilsvrc', task='classification', stride=32,
    heads=(Head('fc8', 'label', 1000),), init=None,
    train_split='train', val_split='val', val_size=50000,
    train_data=None, val_data=None,
    base_lr=0.01, momentum=0.9, iter_size=1, max_iter=0)

BASE_NETS = {spec.name: spec for spec in (
    ModelSpec('vgg16', body='vgg16', deploy_size=(224, 224), **ILSVRC),
    ModelSpec('caffenet', body='alexnet', deploy_size=(227, 227), **ILSVRC),
    ModelSpec('googlenet', body='googlenet', deploy_size=(224, 224),
              **{**ILSVRC, 'heads': (Head('loss3/classifier', 'label', 1000),)}),
)}

MODELS = {spec.name: spec for spec in REFERENCE_MODELS + PAPER_MODELS + TOY_MODELS}

