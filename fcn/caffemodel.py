"""Caffe's weights (.caffemodel) and solver states (.solverstate) read and edited in their
protobuf wire format, without loading the arrays.

A VGG16 FCN's file holds 0.5 GB of floats (1.1 GB for late fusion's two bodies). Parsed
into Python protobuf messages, each file cost about three times its size in memory and
tens of seconds of CPU at every snapshot, on top of the training net; here a file is
mapped, its layer records are walked by their length prefixes, and only the small fields
(names, shapes, the iteration) are decoded. Edits (renamed or dropped layers, another
weights file name in a state) copy the untouched records' bytes as they are.

Field numbers come from Caffe's own message descriptors (caffe_pb2).

`checked_layers` is how every tool meets a weights file before Caffe reads it: Caffe ends
the process (a failed check, exit 134) on a file cut short, another kind of file, or a
blob whose values do not fill its shape.
"""
import mmap
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fcn.errors import UsageError
from fcn.prototxt import caffe_pb2

VARINT, LENGTH_DELIMITED = 0, 2
WIRE_SIZES = {1: 8, 5: 4}  # fixed-size wire types: 64-bit, 32-bit
# What to do about a weights file that is not whole.
WEIGHTS_REMEDY = ("download or copy it again (a training run's final.caffemodel is "
                  "written again by `make MODEL`)")


class CaffemodelError(ValueError):
    """A file that is not a complete protobuf message of the expected kind."""


class WeightsFileError(UsageError):
    """A weights file Caffe cannot load into a net: missing, cut short, another kind of
    file, or another net's weights; the message names the file and what to do."""


# The field numbers of caffe.proto that reading a weights file's layers needs, for a
# process without pycaffe (inference on OpenCV); the wire format fixes them, and a test
# checks them against caffe_pb2's descriptors.
WEIGHTS_FIELDS = {
    ('NetParameter', 'layer'): 100, ('NetParameter', 'layers'): 2,
    ('LayerParameter', 'name'): 1, ('LayerParameter', 'blobs'): 7,
    ('V1LayerParameter', 'name'): 4, ('V1LayerParameter', 'blobs'): 6,
    ('BlobProto', 'num'): 1, ('BlobProto', 'channels'): 2, ('BlobProto', 'height'): 3,
    ('BlobProto', 'width'): 4, ('BlobProto', 'data'): 5, ('BlobProto', 'diff'): 6,
    ('BlobProto', 'shape'): 7, ('BlobProto', 'double_data'): 8,
    ('BlobProto', 'double_diff'): 9,
}


@lru_cache(maxsize=None)
def field_number(message, name):
    """A field's number in caffe.proto: from caffe_pb2, else (no pycaffe here) from
    WEIGHTS_FIELDS."""
    try:
        pb2 = caffe_pb2()
    except (UsageError, ImportError, OSError):
        if (message, name) in WEIGHTS_FIELDS:
            return WEIGHTS_FIELDS[message, name]
        raise
    return getattr(pb2, message).DESCRIPTOR.fields_by_name[name].number


def read_varint(buffer, position, end):
    value = shift = 0
    while True:
        if position >= end or shift > 63:
            raise CaffemodelError('a number is cut short')
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7f) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def encode_varint(value):
    encoded = bytearray()
    while True:
        byte, value = value & 0x7f, value >> 7
        encoded.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(encoded)


def encode_field(number, payload):
    """A length-delimited field (string, bytes or message)."""
    return encode_varint(number << 3 | LENGTH_DELIMITED) + encode_varint(len(payload)) + payload


@dataclass(frozen=True)
class Field:
    number: int
    wire: int
    value: int        # a varint's value; else unused
    start: int        # the field's first byte (its key)
    body: tuple       # (start, end) of a length-delimited payload
    end: int          # one past its last byte


def fields(buffer, start=0, end=None):
    """The fields of the message in buffer[start:end], in order; a CaffemodelError if a
    length or number runs past the end (a file cut short)."""
    end = len(buffer) if end is None else end
    position = start
    while position < end:
        first = position
        key, position = read_varint(buffer, position, end)
        number, wire = key >> 3, key & 7
        value, body = 0, (position, position)
        if wire == VARINT:
            value, position = read_varint(buffer, position, end)
        elif wire == LENGTH_DELIMITED:
            length, position = read_varint(buffer, position, end)
            body = (position, position + length)
            position += length
        elif wire in WIRE_SIZES:
            position += WIRE_SIZES[wire]
        else:
            raise CaffemodelError('unknown wire type {} at byte {}'.format(wire, first))
        if position > end:
            raise CaffemodelError('a field runs past the end of its message at byte {}'.format(
                first))
        yield Field(number, wire, value, first, body, position)


@contextmanager
def mapped(path):
    """The file's bytes, mapped read-only (an empty file gives b'')."""
    path = Path(path)
    if path.stat().st_size == 0:
        yield b''
        return
    with open(path, 'rb') as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as m:
        yield m


@dataclass(frozen=True)
class LayerRecord:
    """One layer of a caffemodel: its name, its parameter blobs' shapes, where it is."""
    name: str
    shapes: tuple
    legacy: bool      # a V1 `layers` entry (files of 2014), else a `layer`
    span: tuple       # (start, end) of the whole field, key included
    body: tuple       # (start, end) of the layer message


def layer_numbers():
    """(NetParameter field, name field, blobs field) for current and V1 layers."""
    return {
        False: (field_number('NetParameter', 'layer'), field_number('LayerParameter', 'name'),
                field_number('LayerParameter', 'blobs')),
        True: (field_number('NetParameter', 'layers'), field_number('V1LayerParameter', 'name'),
               field_number('V1LayerParameter', 'blobs')),
    }


def blob_shape(buffer, start, end):
    """A BlobProto's shape; files of 2014 give num, channels, height, width instead."""
    shape_field = field_number('BlobProto', 'shape')
    legacy = {field_number('BlobProto', name): index
              for index, name in enumerate(('num', 'channels', 'height', 'width'))}
    dims, old = None, [0, 0, 0, 0]
    for field in fields(buffer, start, end):
        if field.number == shape_field:
            dims = []
            for dim in fields(buffer, *field.body):
                if dim.wire == VARINT:
                    dims.append(dim.value)
                else:  # packed
                    position, stop = dim.body
                    while position < stop:
                        value, position = read_varint(buffer, position, stop)
                        dims.append(value)
        elif field.number in legacy and field.wire == VARINT:
            old[legacy[field.number]] = field.value
    return tuple(dims) if dims is not None else tuple(old)


def shapes_match(file_shape, net_shape):
    """Caffe's rule for a blob of the file and one of the net: an old 4-D shape (num,
    channels, height, width) matches a net shape padded to 4-D with leading 1s."""
    if len(file_shape) == 4 and len(net_shape) < 4:
        net_shape = (1,) * (4 - len(net_shape)) + tuple(net_shape)
    return tuple(file_shape) == tuple(net_shape)


def layer_records(buffer):
    """The LayerRecords of a caffemodel's bytes, in file order; a CaffemodelError (or a
    UnicodeDecodeError for a name) where they are not a net's."""
    numbers = layer_numbers()
    by_field = {net_field: legacy for legacy, (net_field, _, _) in numbers.items()}
    records = []
    for field in fields(buffer):
        if field.number not in by_field or field.wire != LENGTH_DELIMITED:
            continue
        legacy = by_field[field.number]
        _, name_field, blobs_field = numbers[legacy]
        name, shapes = '', []
        for inner in fields(buffer, *field.body):
            if inner.number == name_field and inner.wire == LENGTH_DELIMITED:
                name = bytes(buffer[slice(*inner.body)]).decode()
            elif inner.number == blobs_field and inner.wire == LENGTH_DELIMITED:
                shapes.append(blob_shape(buffer, *inner.body))
        records.append(LayerRecord(name, tuple(shapes), legacy,
                                   (field.start, field.end), field.body))
    return records


def read_layers(path):
    """The LayerRecords of a caffemodel, in file order; a CaffemodelError naming the file
    if it is cut short or not a net."""
    try:
        with mapped(path) as buffer:
            return layer_records(buffer)
    except (CaffemodelError, UnicodeDecodeError) as error:
        raise CaffemodelError('{} is not a complete Caffe weights file ({})'.format(
            path, error)) from None


def check_message(buffer, start, end, descriptor):
    """Walk a message and every message inside it, as Caffe's parser reads them; a
    CaffemodelError where a length or a number runs past its message."""
    for field in fields(buffer, start, end):
        described = descriptor.fields_by_number.get(field.number)
        if described is not None and described.message_type is not None \
                and field.wire == LENGTH_DELIMITED:
            check_message(buffer, *field.body, described.message_type)


def blob_values(buffer, start, end):
    """How many values a BlobProto holds for its data (Caffe reads double_data if it has
    any, else data) and for its diff."""
    sizes = {'data': 4, 'double_data': 8, 'diff': 4, 'double_diff': 8}
    numbers = {field_number('BlobProto', name): name for name in sizes}
    counts = dict.fromkeys(sizes, 0)
    for field in fields(buffer, start, end):
        name = numbers.get(field.number)
        if name is None:
            continue
        if field.wire == LENGTH_DELIMITED:  # packed
            length = field.body[1] - field.body[0]
            if length % sizes[name]:
                raise CaffemodelError(f'a packed {name} field of {length} bytes at byte '
                                      f'{field.start}')
            counts[name] += length // sizes[name]
        else:
            counts[name] += 1
    return (counts['double_data'] or counts['data'],
            counts['double_diff'] or counts['diff'])


def check_values(buffer, record):
    """A CaffemodelError unless every blob of the layer holds one value per element of
    its shape (Caffe stops the process otherwise)."""
    _, _, blobs_field = layer_numbers()[record.legacy]
    blobs = [inner for inner in fields(buffer, *record.body)
             if inner.number == blobs_field and inner.wire == LENGTH_DELIMITED]
    for index, (blob, shape) in enumerate(zip(blobs, record.shapes)):
        elements = 1
        for dim in shape:
            elements *= dim
        for kind, count in zip(('values', 'gradients'), blob_values(buffer, *blob.body)):
            if count != elements and (kind == 'values' or count):
                raise CaffemodelError(f'layer {record.name} blob {index} has shape {shape} '
                                      f'({elements} elements) but holds {count} {kind}')


def checked_layers(path, schema=True):
    """The LayerRecords of a weights file Caffe can load: it exists, and is a whole
    NetParameter in protobuf's binary format with layers whose blobs hold their values.
    Otherwise a WeightsFileError naming the file, its size and what to do. `schema`: also
    check every field against Caffe's message definitions (needs pycaffe's caffe_pb2;
    without it the layers and blobs are still read to the end and counted)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f'weights file {path} does not exist: check the path, or '
                               f'make or fetch the file first')
    size = path.stat().st_size
    try:
        with mapped(path) as buffer:
            if schema:
                check_message(buffer, 0, len(buffer), caffe_pb2().NetParameter.DESCRIPTOR)
            records = layer_records(buffer)
            for record in records:
                check_values(buffer, record)
    except (CaffemodelError, UnicodeDecodeError) as error:
        raise WeightsFileError(f'{path} ({size} bytes) is not a complete Caffe weights file '
                               f'({error}): it is cut short or another kind of file; '
                               f'{WEIGHTS_REMEDY}') from None
    if not any(record.shapes for record in records):
        raise WeightsFileError(f'{path} ({size} bytes) holds no layer with weights: it is '
                               f'not a Caffe weights file (.caffemodel); {WEIGHTS_REMEDY}')
    return records


def parse_layer(path, record):
    """The parsed LayerParameter (V1LayerParameter if legacy) of one LayerRecord."""
    pb2 = caffe_pb2()
    message = pb2.V1LayerParameter() if record.legacy else pb2.LayerParameter()
    with mapped(path) as buffer:
        message.ParseFromString(buffer[slice(*record.body)])
    return message


def write_layers(path, out, keep=None, rename=None):
    """Copy a caffemodel to `out`, with only the layers named in `keep` (default all) and
    the layers of `rename` (old name -> new name) renamed; other fields as they are."""
    numbers = layer_numbers()
    rename = rename or {}
    records = {record.span[0]: record for record in read_layers(path)}
    with mapped(path) as buffer, open(out, 'wb') as stream:
        for field in fields(buffer):
            record = records.get(field.start)
            if record is None:
                stream.write(buffer[field.start:field.end])
                continue
            if keep is not None and record.name not in keep:
                continue
            if record.name not in rename:
                stream.write(buffer[field.start:field.end])
                continue
            net_field, name_field, _ = numbers[record.legacy]
            name = encode_field(name_field, rename[record.name].encode())
            others = [inner for inner in fields(buffer, *record.body) if inner.number != name_field]
            length = len(name) + sum(inner.end - inner.start for inner in others)
            stream.write(encode_varint(net_field << 3 | LENGTH_DELIMITED) + encode_varint(length))
            stream.write(name)
            for inner in others:
                stream.write(buffer[inner.start:inner.end])


def read_state(path):
    """(iteration, weights file name) of a solver state, as Caffe reads them (the last
    value of a field written twice); a CaffemodelError if the file is cut short or holds
    no iteration."""
    iteration_field = field_number('SolverState', 'iter')
    weights_field = field_number('SolverState', 'learned_net')
    iteration, weights = None, ''
    try:
        with mapped(path) as buffer:
            for field in fields(buffer):
                if field.number == iteration_field and field.wire == VARINT:
                    iteration = field.value
                elif field.number == weights_field and field.wire == LENGTH_DELIMITED:
                    weights = buffer[slice(*field.body)].decode()
    except (CaffemodelError, UnicodeDecodeError) as error:
        raise CaffemodelError('{} is not a complete solver state ({})'.format(path, error)) \
            from None
    if iteration is None:
        raise CaffemodelError('{} holds no iteration: not a solver state'.format(path))
    return iteration, weights


def set_learned_net(path, weights_name):
    """Make a solver state name another weights file. A field written again later in a
    message overrides the earlier value (protobuf's rule for singular fields), so the new
    name is appended; the history's arrays are not touched."""
    with open(path, 'ab') as stream:
        stream.write(encode_field(field_number('SolverState', 'learned_net'),
                                  str(weights_name).encode()))
        stream.flush()
        os.fsync(stream.fileno())
