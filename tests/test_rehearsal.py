"""The rehearsal's pieces (`make rehearsal` itself is a separate, long target): stand-in
classifiers in Caffe's V1 file format, a dataset prepared through make from served archives
with declared checksums, and what a rehearsal reports (stages, time, peak memory, failure)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import caffe
from caffe.proto import caffe_pb2
from checks import fixtures

from checks import rehearsal
from fcn import surgery
from test_surgery import classifier

caffe.set_mode_cpu()

REPO = rehearsal.REPO


def test_the_sixteen_fcns_are_rehearsed():
    assert len(rehearsal.REHEARSED) == 16
    assert not any(name.startswith('toy') for name in rehearsal.REHEARSED)


def test_v1_classifier_files_load_as_the_net_they_were_saved_from(tmp_path):
    """The 2014 ILSVRC files hold V1 layers and 4-D legacy blob dimensions; Caffe and the
    project's surgery read them as the net that wrote them."""
    deploy = tmp_path / 'classifier.prototxt'
    deploy.write_text(str(classifier()))
    path = rehearsal.random_net_file(deploy, tmp_path / 'classifier.caffemodel', seed=3)
    saved = caffe.Net(str(deploy), str(path), caffe.TEST)
    rehearsal.to_v1(path)

    parsed = caffe_pb2.NetParameter()
    parsed.ParseFromString(path.read_bytes())
    assert len(parsed.layer) == 0
    assert [(layer.name, caffe_pb2.V1LayerParameter.LayerType.Name(layer.type))
            for layer in parsed.layers] == [
        ('conv1', 'CONVOLUTION'), ('relu1', 'RELU'), ('pool5', 'POOLING'),
        ('fc6', 'INNER_PRODUCT'), ('relu6', 'RELU'), ('fc7', 'INNER_PRODUCT'),
        ('fc8', 'INNER_PRODUCT')]
    fc6 = next(layer for layer in parsed.layers if layer.name == 'fc6')
    assert [(blob.HasField('shape'), blob.num, blob.channels, blob.height, blob.width)
            for blob in fc6.blobs] == [(False, 1, 1, 10, 144), (False, 1, 1, 1, 10)]

    legacy = caffe.Net(str(deploy), str(path), caffe.TEST)
    for name, blobs in saved.params.items():
        for old, new in zip(blobs, legacy.params[name]):
            assert np.abs(old.data).sum() > 0
            np.testing.assert_array_equal(new.data, old.data)
    report = surgery.load_weights(caffe.Net(str(deploy), caffe.TEST), path)
    assert report.copied == ['conv1', 'fc6', 'fc7', 'fc8'] and report.dropped == []


def test_make_prepares_a_dataset_from_the_served_archives(tmp_path):
    """The rehearsal's data path: archives served on 127.0.0.1 as the mirror, verified
    against the checksums the rehearsal declares, prepared by the make target users run."""
    served = tmp_path / 'served'
    fixtures.write_archives(served, tmp_path / 'stage', {
        'voc': {'train': ['2007_000001'], 'val': ['2008_000001', '2008_000002']},
        'sbd': {'train': ['2008_000002'], 'val': ['2009_000001']},
        'nyud': {'train': ['1'], 'val': ['2'], 'test': ['3']},
        'siftflow': {'test': ['coast_a1'], 'trainval': ['forest_a2']},
        'context': {'train': ['2008_000010'], 'val': ['2008_000011']},
    })
    rehearsal.write_checksum_list(served, tmp_path / rehearsal.CHECKSUM_LIST)
    with fixtures.FileServer(served) as server:
        env = rehearsal.make_environment(tmp_path, server.url)
        result = subprocess.run(['make', '--no-print-directory', 'data-voc',
                                 'VENV={}'.format(sys.prefix)], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'against the checksums declared in {}, not the published ones'.format(
        tmp_path / rehearsal.CHECKSUM_LIST) in result.stdout
    assert sorted(name for name, _ in server.requests) == ['VOCtrainval_25-May-2011.tar',
                                                            'benchmark.tgz']
    assert (tmp_path / 'data/pascal/VOC2011/ImageSets/Segmentation/seg11valid.txt') \
        .read_text().split() == ['2008_000001']
    assert (tmp_path / 'data/downloads/voc.prepared').is_file()


def test_make_fetches_a_classifier_into_the_classifier_folder(tmp_path):
    """The rehearsal's classifiers come the way users' do (make -> data.prepare --weights,
    through the mirror) into CLASSIFIER_DIR; the published SHA-1 refuses them unless the
    rehearsal declares their checksums."""
    served = tmp_path / 'served'
    served.mkdir()
    (served / 'bvlc_googlenet.caffemodel').write_bytes(b'a stand-in classifier')
    rehearsal.write_checksum_list(served, tmp_path / rehearsal.CHECKSUM_LIST)
    target = tmp_path / 'classifiers' / 'bvlc_googlenet.caffemodel'
    command = ['make', '--no-print-directory', str(target), 'VENV={}'.format(sys.prefix),
               'CLASSIFIER_DIR={}'.format(target.parent)]
    with fixtures.FileServer(served) as server:
        env = rehearsal.make_environment(tmp_path, server.url)
        undeclared = dict(env)
        del undeclared['FCN_CHECKSUMS']
        refused = subprocess.run(command, cwd=REPO, env=undeclared, capture_output=True,
                                 text=True, timeout=300)
        assert refused.returncode != 0 and not target.exists()
        assert 'bvlc_googlenet.caffemodel fails its checksum twice' in refused.stderr
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert target.read_bytes() == b'a stand-in classifier'
    assert 'bvlc_googlenet.caffemodel.part against the checksums declared' in result.stdout


def test_the_fixture_ids_have_the_real_split_structure():
    ids = rehearsal.fixture_ids()
    seg11valid = [i for i in ids['voc']['val'] if i not in ids['sbd']['train']]
    assert 0 < len(seg11valid) < len(ids['voc']['val'])
    assert set(rehearsal.SIFTFLOW_UNANNOTATED) <= set(ids['siftflow']['trainval'])


def in_fresh_python(code, tmp_path):
    """Run code in a new interpreter: a process started from this one would report this
    one's peak memory as its own (Linux carries it across fork and exec)."""
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO / 'solve', text=True,
                            capture_output=True, timeout=300,
                            env={**os.environ, 'TMP_PATH': str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_make_run_is_measured_stage_by_stage(tmp_path):
    """Stages from the commands echoed, seconds, and the peak memory of the largest
    process: here a child that holds 300 MB for two seconds."""
    said = in_fresh_python(textwrap.dedent('''
        import json, os, sys
        from pathlib import Path
        from checks import rehearsal
        script = ('echo "/x/python solve/solve.py voc-fcn32s --cpu"; '
                  '{} -c "import time, numpy; a = numpy.ones(300 * 2**20 // 8); time.sleep(2)"; '
                  'echo "/x/python solve/score.py voc-fcn32s --weights w"; exit 3'
                  ).format(sys.executable)
        log = Path(os.environ['TMP_PATH']) / 'log'
        print(json.dumps(rehearsal.run_make(['sh', '-c', script], dict(os.environ), log,
                                            lambda line: None)))
    '''), tmp_path)
    status, seconds, peak, stages = json.loads(said)
    assert status == 3 and seconds >= 2
    assert 300 * 2 ** 20 <= peak < 400 * 2 ** 20
    assert [stage for stage, _, _ in stages] == ['train voc-fcn32s', 'score voc-fcn32s']
    assert stages[0][1] >= 2 and 300 * 2 ** 20 <= stages[0][2] < 400 * 2 ** 20
    assert (tmp_path / 'log').read_text().splitlines()[1] == \
        '/x/python solve/solve.py voc-fcn32s --cpu'


def test_the_peak_reported_is_makes_not_the_rehearsals(tmp_path):
    """Making the archives and classifiers takes gigabytes; it happens in a child, so
    that the make runs started afterwards do not report that peak as theirs."""
    said = in_fresh_python(textwrap.dedent('''
        import json, os
        from pathlib import Path
        import numpy
        from checks import rehearsal
        folder = Path(os.environ['TMP_PATH'])

        def make_served(folder):  # as heavy as making the classifiers
            (folder / 'served').mkdir(exist_ok=True)
            ballast = numpy.ones(600 * 2 ** 20 // 8)

        rehearsal.make_served = make_served
        rehearsal.make_command = lambda model, folder, *args: ['sh', '-c', (
            'mkdir -p {0}/runs/{1} && echo \\'{{"mean_iu": 0.5}}\\' > {0}/runs/{1}/score.json'
            ).format(folder, model)]
        assert rehearsal.rehearse(['voc-fcn32s'], folder, 1, 2) == 0
    '''), tmp_path)
    summary = json.loads((tmp_path / 'summary.json').read_text())
    record, = summary['models']
    assert record['mean_iu'] == {'': 0.5} and summary['disk_bytes'] == len('{"mean_iu": 0.5}\n')
    assert record['peak_bytes'] < 300 * 2 ** 20, said


@pytest.mark.parametrize('line, stage', [
    ('/r/.venv/bin/python -m data.prepare nyud', 'data-nyud'),
    ('/r/.venv/bin/python -m data.prepare --weights /r/runs/rehearsal/classifiers/'
     'VGG_ILSVRC_16_layers.caffemodel', 'fetch VGG_ILSVRC_16_layers'),
    ('/r/.venv/bin/python solve/surgery.py to-fcn --classifier models/caffenet/deploy.prototxt '
     '--weights w \\', 'surgery caffenet'),
    ('/r/.venv/bin/python solve/solve.py nyud-fcn32s-color-hha --cpu --resume auto',
     'train nyud-fcn32s-color-hha'),
    ('[voc-fcn32s] snapshot /r/runs/voc-fcn32s/snapshots/x.solverstate', None),
])
def test_stages_are_told_by_the_commands_make_echoes(line, stage):
    assert rehearsal.stage_of(line) == stage


def test_a_failing_model_stops_the_rehearsal_with_its_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rehearsal, 'make_served', lambda folder: None)
    monkeypatch.setattr(rehearsal, 'make_command', lambda model, *args: [
        'sh', '-c', 'echo "training {}"; echo "make: *** [Makefile:176: final.caffemodel] '
                    'Killed" >&2; exit 2'.format(model)])
    assert rehearsal.rehearse(['voc-fcn32s', 'voc-fcn16s'], tmp_path, 1, 2) == 1
    said = capsys.readouterr().out
    assert 'REHEARSAL FAILED at voc-fcn32s after' in said
    assert 'make exited with status 2 (a process was killed: out of memory? see dmesg)' in said
    assert '  training voc-fcn32s\n  make: *** [Makefile:176: final.caffemodel] Killed' in said
    assert 'voc-fcn16s' not in said.split('REHEARSAL FAILED')[1]
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['failed'] == 'voc-fcn32s' and summary['models'] == []


def test_mean_ius_of_one_and_two_headed_scores(tmp_path):
    one, two = tmp_path / 'one.json', tmp_path / 'two.json'
    one.write_text(json.dumps({'model': 'm', 'mean_iu': 0.25, 'pixel_acc': 0.5}))
    two.write_text(json.dumps({'model': 'm', 'sem': {'mean_iu': 0.1}, 'geo': {'mean_iu': None}}))
    assert rehearsal.mean_ius(one) == {'': 0.25}
    assert rehearsal.mean_ius(two) == {'sem': 0.1, 'geo': None}
    line = rehearsal.summary_line({'model': 'siftflow-fcn8s', 'seconds': 61.2,
                                   'peak_bytes': 3 * 2 ** 30, 'mean_iu': {'sem': 0.1, 'geo': None},
                                   'load': 2.5, 'stages': [('train siftflow-fcn8s', 40, 2 ** 30)]})
    assert line.startswith('siftflow-fcn8s           ok     61 s  peak  3.00 GiB  mean IU '
                           'sem 10.0%  geo n/a  load 2.5  stages: train siftflow-fcn8s 40 s 1.0 GiB')
