"""Test helpers for the data layers and dataset preparation: crafted archives, and data
layers outside and inside a net. The made-up datasets themselves, their archives and the
local HTTP server are the project's (data/fixtures.py, shared with the rehearsal).

Imported by module name by the test_layers_* and test_data_* files; it holds no tests.
"""
import io
import json
import tarfile
from pathlib import Path

import numpy as np

from checks.fixtures import CONTEXT_SPELLING, CONTEXT_TASK, context_full_labels


def context_expected(full_map):
    """The 59-class labels of a LabelMap, worked out from the fixture's names."""
    full = {number: label.replace(' ', '') for number, label in context_full_labels().items()}
    task_of = {CONTEXT_SPELLING.get(label, label): index
               for index, label in enumerate(CONTEXT_TASK, 1)}
    return np.vectorize(lambda number: task_of.get(full[number], 0))(full_map).astype(np.uint8)


def tar_with_member(archive, name, kind=tarfile.REGTYPE, linkname='', data=b'x'):
    """A tar holding one crafted member (for the unsafe-archive tests)."""
    with tarfile.open(archive, 'w') as tar:
        member = tarfile.TarInfo(name)
        member.type, member.linkname = kind, linkname
        member.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(member, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return archive


# ---- data layers outside and inside a net ---------------------------------------------------

class FakeBlob:
    """Stands in for a Caffe top blob: reshape() allocates, data is written by forward()."""

    def __init__(self):
        self.data = None

    def reshape(self, *shape):
        self.data = np.zeros(shape, dtype=np.float32)


def instantiate(layer_class, params, num_tops):
    """A data layer set up outside Caffe: its param_str given as a class attribute
    (a Caffe Layer cannot be constructed from Python without a net)."""
    param_str = params if isinstance(params, str) else json.dumps(params)
    configured = type(layer_class.__name__, (layer_class,), {'param_str': param_str})
    layer = configured.__new__(configured)
    tops = [FakeBlob() for _ in range(num_tops)]
    layer.setup([], tops)
    return layer, tops


def step(layer, tops):
    """One iteration as Caffe runs it: reshape, forward; the tops' contents."""
    layer.reshape([], tops)
    layer.forward([], tops)
    return [top.data.copy() for top in tops]


def net_with_layer(folder, module, layer_name, params, tops):
    """A caffe.Net (TEST phase) whose only layer is the given Python data layer."""
    import caffe
    prototxt = Path(folder) / 'net.prototxt'
    prototxt.write_text('layer {{ name: "data" type: "Python" {} python_param {{ '
                        'module: "{}" layer: "{}" param_str: \'{}\' }} }}\n'.format(
                            ' '.join('top: "{}"'.format(top) for top in tops),
                            module, layer_name, json.dumps(params)))
    return caffe.Net(str(prototxt), caffe.TEST)
