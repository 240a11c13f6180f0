"""Caffe's net and solver definitions (prototxt files) as caffe_pb2 messages: read with the
file, line and column of any mistake, written atomically, and handed to Caffe as files.

Used by the library and the benchmarks alike; nothing here loads libcaffe, so a process
that only reads definitions (the benchmark's PyTorch worker) never has Caffe's libraries.
"""
import importlib.util
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from fcn.errors import UsageError

PB2_MODULE = 'caffe.proto.caffe_pb2'


class NetFileError(UsageError):
    """A prototxt that cannot be read: its file, line and column, and what to do."""


def caffe_pb2():
    """Caffe's protobuf module (caffe.proto.caffe_pb2).

    Where pycaffe is not imported yet, the module's file is loaded on its own, under its
    own name, without libcaffe; pycaffe imported later finds it in sys.modules (its
    messages are the same classes, and the descriptor pool holds caffe.proto once)."""
    module = sys.modules.get(PB2_MODULE)
    if module is not None:
        return module
    spec = importlib.util.find_spec('caffe')
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("pycaffe is not importable: run `make caffe` first, or put a Caffe "
                         "build's python folder on PYTHONPATH")
    path = Path(list(spec.submodule_search_locations)[0]) / 'proto' / 'caffe_pb2.py'
    module_spec = importlib.util.spec_from_file_location(PB2_MODULE, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[PB2_MODULE] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PB2_MODULE]
        raise
    return module


def read_text_proto(path, message):
    """Merge the prototxt `path` into `message` and return it; a NetFileError naming the
    file, the line and column the parser stopped at, and what to do."""
    from google.protobuf import text_format
    path = Path(path)
    remedy = ('fix the file, or write the project\'s model files again with `make models` '
              'if it is one of them')
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NetFileError(f'{path} does not exist: check the path, or generate the model '
                           f'files first (`make models`)') from None
    except (OSError, UnicodeDecodeError) as error:
        raise NetFileError(f'{path} cannot be read as a prototxt ({error}); {remedy}') \
            from None
    try:
        return text_format.Merge(text, message)
    except text_format.ParseError as error:
        line, column = error.GetLine(), error.GetColumn()
        said = str(error)
        if line is not None:
            where = f'{line}:{column}' if column is not None else f'{line}'
            said = said.removeprefix(f'{where} : ')
            location = f'{path}:{where}'
        else:
            location = str(path)
        raise NetFileError(f'{location}: {said.rstrip(".")}; {remedy}') from None


def read_net(path):
    """A net definition (NetParameter) from its prototxt."""
    return read_text_proto(path, caffe_pb2().NetParameter())


def read_solver(path):
    """A solver definition (SolverParameter) from its prototxt."""
    return read_text_proto(path, caffe_pb2().SolverParameter())


def write_text_proto(path, message):
    """Write a prototxt atomically."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    tmp.write_text(str(message))
    os.replace(tmp, path)


@contextmanager
def temporary_prototxt(message, directory=None):
    """A prototxt file holding `message` while the block runs (Caffe reads paths only)."""
    fd, path = tempfile.mkstemp(suffix='.prototxt', dir=directory)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(str(message))
        yield path
    finally:
        os.unlink(path)


def data_layers(net_param):
    """The Python layers that take no bottoms: the nets' data layers."""
    return [layer for layer in net_param.layer
            if layer.type == 'Python' and not layer.bottom]
