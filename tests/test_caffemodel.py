"""caffemodel.py: weights and solver states read and edited in the wire format agree with
Caffe's protobuf messages (the oracle: the whole file parsed by caffe_pb2) and with Caffe
itself; files cut short are errors."""
import numpy as np
import pytest

import caffe
from caffe.proto import caffe_pb2

from fcn import caffemodel
from checks import rehearsal
from checks import stress
from fcn.training import trainer
from test_surgery import classifier

caffe.set_mode_cpu()


@pytest.fixture(params=['current', 'v1'])
def weights(request, tmp_path):
    """A random classifier's weights, as Caffe saves them or in the V1 format of 2014."""
    deploy = tmp_path / 'classifier.prototxt'
    deploy.write_text(str(classifier()))
    path = rehearsal.random_net_file(deploy, tmp_path / 'classifier.caffemodel', seed=5)
    if request.param == 'v1':
        rehearsal.to_v1(path)
    return deploy, path


def parsed(path):
    return caffe_pb2.NetParameter.FromString(path.read_bytes())


def shape_of(blob):
    return tuple(blob.shape.dim) if blob.HasField('shape') else \
        (blob.num, blob.channels, blob.height, blob.width)


def test_layers_are_read_as_protobuf_parses_them(weights):
    _, path = weights
    net = parsed(path)
    expected = [(layer.name, tuple(shape_of(blob) for blob in layer.blobs))
                for layer in list(net.layer) + list(net.layers)]
    assert [(record.name, record.shapes) for record in caffemodel.read_layers(path)] == expected
    assert any(shapes for _, shapes in expected)
    record = next(record for record in caffemodel.read_layers(path) if record.name == 'fc6')
    layer = caffemodel.parse_layer(path, record)
    np.testing.assert_array_equal(layer.blobs[0].data, next(
        entry for entry in list(net.layer) + list(net.layers) if entry.name == 'fc6').blobs[0].data)


def test_layers_are_kept_and_renamed_with_their_weights_untouched(weights, tmp_path):
    deploy, path = weights
    out = tmp_path / 'edited.caffemodel'
    caffemodel.write_layers(path, out, keep={'conv1', 'fc6', 'relu1'},
                            rename={'fc6': 'fc6_color', 'relu1': 'relu1_color'})
    before, after = parsed(path), parsed(out)
    layers = {entry.name: entry for entry in list(before.layer) + list(before.layers)}
    edited = list(after.layer) + list(after.layers)
    assert [entry.name for entry in edited] == ['conv1', 'relu1_color', 'fc6_color']
    for entry, original in zip(edited, ('conv1', 'relu1', 'fc6')):
        copy = type(entry)()
        copy.CopyFrom(layers[original])
        copy.name = entry.name
        assert entry == copy
    # Caffe reads the edited file: the renamed layer's weights land in the renamed layer.
    net = caffe.Net(str(deploy), caffe.TEST)
    filled = net.params['fc6'][0].data.copy()
    net.copy_from(str(out))
    reference = caffe.Net(str(deploy), str(path), caffe.TEST)
    np.testing.assert_array_equal(net.params['conv1'][0].data, reference.params['conv1'][0].data)
    np.testing.assert_array_equal(net.params['fc6'][0].data, filled)  # fc6 is fc6_color now
    assert not np.array_equal(filled, reference.params['fc6'][0].data)


def test_a_file_cut_short_is_an_error_naming_it(weights, tmp_path):
    _, path = weights
    whole = path.read_bytes()
    for cut in (len(whole) - 1, len(whole) // 2, 3):
        path.write_bytes(whole[:cut])
        with pytest.raises(caffemodel.CaffemodelError,
                           match='classifier.caffemodel is not a complete Caffe weights file'):
            caffemodel.read_layers(path)
    path.write_bytes(b'')
    assert caffemodel.read_layers(path) == []


def test_solver_states_are_read_and_renamed_as_caffe_reads_them(tmp_path):
    """A snapshot's state names its weights by bare name; a copy naming them by their
    absolute path (appended: the last value of a field wins) restores in Caffe."""
    solver = stress.write_model(tmp_path / 'model', max_iter=3, snapshot=3)
    training = trainer.TrainingRun(name='tiny', solver=solver, run_dir=tmp_path / 'run',
                                   heads=stress.heads(), test_every=0)
    assert trainer.train(training, trainer.StopRequest())
    state = tmp_path / 'run' / 'snapshots' / 'tiny_iter_3.solverstate'
    assert caffemodel.read_state(state) == (3, 'tiny_iter_3.caffemodel')
    message = caffe_pb2.SolverState.FromString(state.read_bytes())
    assert message.iter == 3 and message.learned_net == 'tiny_iter_3.caffemodel'
    assert len(message.history) > 0

    copy = tmp_path / 'copy.solverstate'
    copy.write_bytes(state.read_bytes())
    caffemodel.set_learned_net(copy, tmp_path / 'elsewhere.caffemodel')
    assert caffemodel.read_state(copy) == (3, str(tmp_path / 'elsewhere.caffemodel'))
    again = caffe_pb2.SolverState.FromString(copy.read_bytes())
    assert again.learned_net == str(tmp_path / 'elsewhere.caffemodel')
    assert again.history == message.history

    state.write_bytes(state.read_bytes()[:-10])
    with pytest.raises(caffemodel.CaffemodelError, match='tiny_iter_3.solverstate is not a '
                                                         'complete solver state'):
        caffemodel.read_state(state)


def test_varints_round_trip():
    for value in (0, 1, 127, 128, 300, 2 ** 31, 2 ** 63 - 1):
        encoded = caffemodel.encode_varint(value)
        assert caffemodel.read_varint(encoded, 0, len(encoded)) == (value, len(encoded))
    with pytest.raises(caffemodel.CaffemodelError):
        caffemodel.read_varint(b'\x80\x80', 0, 2)
