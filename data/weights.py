"""The published weights and scores: data only, beside the model table.

`WEIGHTS` maps a net of the model table (`models.specs.MODELS` or `BASE_NETS`) to the
caffemodel its authors published for it, as a download source of `data.fetch`: the ILSVRC
classifiers surgery starts from, and the trained FCNs of the reference release (each model
folder's `caffemodel-url`, all on the BVLC download host). A SHA-1 is given where one was
published (five files); for the others the fetcher records the size and digests of the
first download next to the file and checks later copies against them. The source key
names the file on the command line (`--url KEY=URL`) and in the environment
(`FCN_URL_<KEY>`); a mirror (`FCN_DATA_MIRROR`) serves it by its file name.

`PUBLISHED_SCORES` holds the mean IU each model's paper or the reference README reports,
for `solve/report.py`'s reproduction table.

Nothing here imports Caffe: the Makefile's rule generator reads it with the system Python.
"""
from dataclasses import dataclass

from data.sources import Source

from fcn.paths import REPO
# The classifiers go to weights/, the released FCNs to weights/released/.
WEIGHTS_DIR = REPO / 'weights'
RELEASED_FOLDER = 'released'

BVLC = 'http://dl.caffe.berkeleyvision.org/'
VGG = 'http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/'

# Sizes of the released FCNs are approximate: 4 bytes per parameter (models/README.md).
CLASSIFIERS = {
    'vgg16': Source('vgg16', 'VGG_ILSVRC_16_layers.caffemodel',
                    VGG + 'VGG_ILSVRC_16_layers.caffemodel',
                    sha1='9363e1f6d65f7dba68c4f27a1e62105cdf6c4e24', size='528 MB'),
    'caffenet': Source('caffenet', 'bvlc_reference_caffenet.caffemodel',
                       BVLC + 'bvlc_reference_caffenet.caffemodel',
                       sha1='4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46', size='233 MB'),
    'googlenet': Source('googlenet', 'bvlc_googlenet.caffemodel',
                        BVLC + 'bvlc_googlenet.caffemodel',
                        sha1='405fc5acd08a3bb12de8ee5e23a96bec22f08204', size='53 MB'),
}


def released(model, filename, size, sha1=None):
    """The reference release's caffemodel of `model`; its key is the model name with '_'
    for '-', so that FCN_URL_<KEY> is a valid environment variable name."""
    return Source(model.replace('-', '_'), filename, BVLC + filename, sha1=sha1, size=size)


RELEASED = {source.key.replace('_', '-'): source for source in (
    released('voc-fcn32s', 'fcn32s-heavy-pascal.caffemodel', '~545 MB',
             sha1='05eb922d7829c39448f57e5ab9d8cd75d6c0be6d'),
    released('voc-fcn16s', 'fcn16s-heavy-pascal.caffemodel', '~540 MB'),
    released('voc-fcn8s', 'fcn8s-heavy-pascal.caffemodel', '~538 MB',
             sha1='c449ea74dd7d83751d1357d6a8c323fcf4038962'),
    released('voc-fcn8s-atonce', 'fcn8s-atonce-pascal.caffemodel', '~538 MB'),
    released('voc-fcn-alexnet', 'fcn-alexnet-pascal.caffemodel', '~235 MB'),
    released('nyud-fcn32s-color', 'nyud-fcn32s-color-heavy.caffemodel', '~564 MB'),
    released('nyud-fcn32s-hha', 'nyud-fcn32s-hha-heavy.caffemodel', '~564 MB'),
    released('nyud-fcn32s-color-hha', 'nyud-fcn32s-color-hha-heavy.caffemodel', '~1.1 GB'),
    released('siftflow-fcn32s', 'siftflow-fcn32s-heavy.caffemodel', '~556 MB'),
    released('siftflow-fcn16s', 'siftflow-fcn16s-heavy.caffemodel', '~542 MB'),
    released('siftflow-fcn8s', 'siftflow-fcn8s-heavy.caffemodel', '~539 MB'),
    released('pascalcontext-fcn32s', 'pascalcontext-fcn32s-heavy.caffemodel', '~597 MB'),
    released('pascalcontext-fcn16s', 'pascalcontext-fcn16s-heavy.caffemodel', '~553 MB'),
    released('pascalcontext-fcn8s', 'pascalcontext-fcn8s-heavy.caffemodel', '~542 MB'),
)}

# Net name -> source: every published caffemodel, by the net it loads into.
WEIGHTS = {**CLASSIFIERS, **RELEASED}
# Download key -> source, for data.fetch.Fetcher.
SOURCES = {source.key: source for source in WEIGHTS.values()}


def local_path(name):
    """Where the weights of net `name` live: weights/<file> for a classifier,
    weights/released/<file> for a released FCN."""
    folder = WEIGHTS_DIR / RELEASED_FOLDER if name in RELEASED else WEIGHTS_DIR
    return folder / WEIGHTS[name].filename


@dataclass(frozen=True)
class PublishedScore:
    """A mean IU (percent) as published: on which split, and where it was published."""
    mean_iu: float
    split: str
    where: str


CVPR = 'Long et al., CVPR 2015'
REFERENCE = 'reference README'

PUBLISHED_SCORES = {
    'voc-fcn32s': PublishedScore(63.6, 'seg11valid', REFERENCE),
    'voc-fcn16s': PublishedScore(65.0, 'seg11valid', REFERENCE),
    'voc-fcn8s': PublishedScore(65.5, 'seg11valid', REFERENCE),
    'voc-fcn8s-atonce': PublishedScore(65.4, 'seg11valid', REFERENCE),
    'voc-fcn-alexnet': PublishedScore(48.0, 'seg11valid', REFERENCE),
    # The paper's third net, never released; scored on its VOC2011 validation subset.
    'voc-fcn-googlenet': PublishedScore(42.5, 'VOC2011 val subset', CVPR + ', Table 1'),
    'nyud-fcn32s-color': PublishedScore(29.2, 'test', CVPR + ', Table 4 (RGB)'),
    'nyud-fcn32s-hha': PublishedScore(24.2, 'test', CVPR + ', Table 4 (HHA)'),
    'nyud-fcn32s-color-d': PublishedScore(30.5, 'test', CVPR + ', Table 4 (RGBD)'),
    'nyud-fcn32s-color-hha': PublishedScore(32.8, 'test', CVPR + ', Table 4 (RGB-HHA)'),
    # Semantic classes; the paper reports FCN-16s only.
    'siftflow-fcn16s': PublishedScore(39.5, 'test', CVPR + ', Table 5 (semantic)'),
    'pascalcontext-fcn32s': PublishedScore(31.8, 'val', 'Long et al., arXiv:1411.4038'),
    'pascalcontext-fcn16s': PublishedScore(34.8, 'val', 'Long et al., arXiv:1411.4038'),
    'pascalcontext-fcn8s': PublishedScore(35.1, 'val', 'Long et al., arXiv:1411.4038'),
}
