"""Every file the dataset preparation downloads: where from, and the checksum that
proves a copy genuine.

A checksum of None means none is published: the first download is then accepted, and
its size and digests are recorded next to it (<file>.digests.json, see data.fetch) and
printed, so that later copies are checked against them and they can be compared with a
trusted copy and written here. The published weights (models/weights.py) are sources of
the same kind.
The key names the source on the command line (--url KEY=URL) and in the
environment (FCN_URL_<KEY>, upper case).
"""
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Source:
    key: str
    filename: str
    url: str
    md5: Optional[str] = None
    sha1: Optional[str] = None
    sha256: Optional[str] = None
    size: str = 'unknown'   # approximate, for the user's information
    origin: str = ''        # where the checksum was published, when not in the facts sheet


SOURCES = {source.key: source for source in (
    Source('voc2011', 'VOCtrainval_25-May-2011.tar',
           'http://host.robots.ox.ac.uk/pascal/VOC/voc2011/VOCtrainval_25-May-2011.tar',
           md5='6c3384ef61512963050cb5d687e5bf1e', size='1.7 GB'),
    Source('sbd', 'benchmark.tgz',
           'https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/'
           'semantic_contours/benchmark.tgz',
           md5='82b4d87ceb2ed10f6038a1cba92111cb', size='1.4 GB'),
    Source('voc2010', 'VOCtrainval_03-May-2010.tar',
           'http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar',
           md5='da459979d0c395079b5c75ee67908abb', size='1.3 GB',
           origin="torchvision's VOC dataset table"),
    Source('context', 'trainval.tar.gz',
           'https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz',
           md5='df034edb2c12aa7d33b42b20bb1796e3',
           origin='public PASCAL-Context download scripts'),
    Source('context59', '59_labels.txt',
           'https://cs.stanford.edu/~roozbeh/pascal-context/59_labels.txt',
           md5='993901f2d930cc038c406845f08fa082',
           origin='public PASCAL-Context download scripts'),
    Source('nyud', 'nyud.tar.gz', 'http://dl.caffe.berkeleyvision.org/nyud.tar.gz'),
    Source('siftflow', 'SiftFlowDataset.zip',
           'http://www.cs.unc.edu/~jtighe/Papers/ECCV10/siftflow/SiftFlowDataset.zip',
           size='140 MB'),
)}
