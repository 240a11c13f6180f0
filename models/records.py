"""The model table's record types: a model (`ModelSpec`), its output heads (`Head`) and
its data layer (`DataLayer`). The reference table (models/specs.py) and the models a user
declares (models/declared.py) are both made of these; only the standard library here, so
that the system python3 that writes the make rules reads them too.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Head:
    """One output of a net: its score top, the label top it learns from, its class count.

    ignore_absent: leave classes that never occur in the evaluation split out of mean IU
    (SIFT Flow's semantic test set lacks three of its classes).
    class_names: the classes' names, where the dataset's layer module does not list them
    (a dataset of one's own names them in its classes.txt).
    """
    score: str
    label: str
    num_classes: int
    ignore_absent: bool = False
    class_names: tuple = ()


@dataclass(frozen=True)
class DataLayer:
    """A Python data layer: `module.Class` as Caffe imports it, and the JSON parameters it
    gets for every split (as (key, value) pairs, so that a spec stays immutable). The
    builders add split, randomize and seed, and tops or batch_size where the layer has them.
    """
    layer: str
    params: tuple = ()


def data_layer(layer, **params):
    return DataLayer(layer, tuple(params.items()))


@dataclass(frozen=True)
class ModelSpec:
    """One net and how to train it.

    name        folder under models/
    dataset     'voc' | 'nyud' | 'siftflow' | 'pascalcontext' | 'toy' ('ilsvrc' for BASE_NETS,
                'folder' for a dataset of one's own: models/declared.py)
    body        'vgg16' | 'alexnet' | 'googlenet'
    stride      32 | 16 | 8: the output stride of the finest score fused (FCN-32s/16s/8s)
    heads       the outputs, each with its own score layers and loss
    init        what training starts from: another model's name (its final weights), a base
                weights name ('vgg16-fcn', 'alexnet-fcn', 'toy-vgg16-fcn'), a tuple of model
                names (late fusion: one body from each), a weights file ('<path>.caffemodel',
                relative to the repository), or None (from scratch)
    train_split, val_split, train_data, val_data: the data layer of train/val.prototxt
    val_size    images in val_split: the solver's test_iter (per batch)
    base_lr, momentum, iter_size, max_iter: the solver, as the reference's solver.prototxt
                says
    lr_policy, power, weight_decay: the reference's for every reference net (fixed rate,
                5e-4); the toy nets decay the rate to zero ('poly', power 1) and do not
                decay weights (models/README.md, the toy recipe)
    snapshot    the solver's snapshot interval (0: the solver names none, as the
                reference's SIFT Flow solvers); solve.py snapshots at it, else at test_every
    iterations  how long training runs: what the reference's solve script ran, K calls of
                solver.step(test_every), which ignores max_iter (None: max_iter)
    test_every  iterations between scores of the val net: the reference script's step
    init_snapshots  for each `init` model, the iteration of its snapshot that training
                starts from (late fusion: the reference took the colour net at 28000
                and the HHA net at 60000); empty: their final weights
    solver_type Caffe's solver: 'SGD' (with momentum) for every reference net
    random_seed the solver's random_seed (weight fillers, dropout), or None for Caffe's
                clock-seeded default, as in the reference solvers
    task        'segmentation' (an FCN) | 'classification' (a classifier to transplant from)
    width       multiplier of every body convolution's outputs (the toy nets are narrow)
    modalities  NYUD inputs the data layer loads (its `tops`), in order; empty elsewhere
    fusion      how several modalities meet: 'early' (channels concatenated into one body)
                or 'late' (one body each, coarse scores averaged)
    first_conv  name of conv1_1; renamed where its input is not the 3-channel image, so that
                weights are not transplanted into it; training from base weights then fills
                it as the reference did: conv1_1's weights on the colour channels, their
                mean on each further channel, conv1_1's bias
    skip_scales fixed factors on pool4 and pool3 before their score layers (FCN-8s at once)
    normalize_loss  the loss averages over pixels (else it sums them, as the VGG nets do)
    deploy_size (height, width) of deploy.prototxt's example input
    batch_size  images per iteration (the FCNs take one image of any size)
    weight_filler  Caffe filler of the body's weights when training from scratch
    fc6_kernel  the VGG16 FCN's fc6 kernel: the pool5 size of the classifier it comes from
                (7 for ILSVRC's 224x224 crops)
    fresh_scores  the score layers start from their fillers even where `init` holds score
                layers of their shape (fine-tuning to other classes of the same count)
    """
    name: str
    dataset: str
    body: str
    stride: int
    heads: tuple
    init: str | tuple | None
    train_split: str
    val_split: str
    train_data: DataLayer | None
    val_data: DataLayer | None
    val_size: int
    base_lr: float
    momentum: float
    iter_size: int
    max_iter: int
    task: str = 'segmentation'
    width: float = 1.0
    modalities: tuple = ()
    fusion: str | None = None
    first_conv: str = 'conv1_1'
    skip_scales: tuple = ()
    normalize_loss: bool = False
    deploy_size: tuple = (500, 500)
    batch_size: int = 1
    weight_filler: str | None = None
    fc6_kernel: int = 7
    solver_type: str = 'SGD'
    snapshot: int = 4000
    iterations: int | None = None
    test_every: int = 4000
    init_snapshots: tuple = ()
    random_seed: int | None = None
    fresh_scores: bool = False
    lr_policy: str = 'fixed'
    power: float | None = None
    weight_decay: float = 0.0005
