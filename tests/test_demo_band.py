"""bench/demo_band.py: the seeds set in a copy of the toy nets, the kernel choices read,
a finished demo's figures read, and the band and goals reported."""
import json
import shutil

import pytest

from bench import demo_band


def test_the_seed_is_set_in_every_toy_solver_and_training_data_layer(tmp_path):
    for _, model in demo_band.STAGES:
        shutil.copytree(demo_band.REPO / 'models' / model, tmp_path / 'models' / model)
    demo_band.set_seed(tmp_path, 42)
    for _, model in demo_band.STAGES:
        solver = (tmp_path / 'models' / model / 'solver.prototxt').read_text()
        train = (tmp_path / 'models' / model / 'train.prototxt').read_text()
        assert 'random_seed: 42\n' in solver and '1337' not in solver
        assert '\\"seed\\": 42' in train and '\\"seed\\": 1337' not in train
        # The val net is scored in order, whatever the seed.
        assert (tmp_path / 'models' / model / 'val.prototxt').read_text() == (
            demo_band.REPO / 'models' / model / 'val.prototxt').read_text()


def test_a_toy_net_without_its_seed_line_is_named(tmp_path):
    for _, model in demo_band.STAGES:
        shutil.copytree(demo_band.REPO / 'models' / model, tmp_path / 'models' / model)
    solver = tmp_path / 'models' / 'toy-fcn16s' / 'solver.prototxt'
    solver.write_text(solver.read_text().replace('random_seed: 1337\n', ''))
    with pytest.raises(demo_band.BandError, match='toy-fcn16s/solver.prototxt.*found 0'):
        demo_band.set_seed(tmp_path, 7)


def test_kernel_choices():
    assert demo_band.parse_kernel('default') == {}
    assert demo_band.parse_kernel('OPENBLAS_CORETYPE=Sandybridge') == {
        'OPENBLAS_CORETYPE': 'Sandybridge'}
    assert demo_band.parse_kernel('FCN_BLAS=default,OPENBLAS_CORETYPE=Haswell') == {
        'FCN_BLAS': 'default', 'OPENBLAS_CORETYPE': 'Haswell'}
    with pytest.raises(demo_band.BandError, match="'Haswell'"):
        demo_band.parse_kernel('Haswell')


def finished_demo(tree, accuracy, mean_ius, seconds):
    """The files a finished `make demo` leaves that the band reads."""
    runs = tree / 'runs'
    (runs / 'demo').mkdir(parents=True)
    (runs / 'demo' / 'scores.json').write_text(json.dumps(
        {key: {'mean_iu': value} for key, value in zip(('fcn32s', 'fcn16s', 'fcn8s'),
                                                        mean_ius)}))
    (runs / 'toy-vgg16').mkdir()
    (runs / 'toy-vgg16' / 'val_log.json').write_text(json.dumps(
        [{'iteration': 300, 'label': {'pixel_acc': accuracy}}]))
    for (_, model), total in zip(demo_band.STAGES, seconds):
        (runs / model).mkdir(exist_ok=True)
        (runs / model / 'train_log.csv').write_text(
            f'iteration,seconds,loss,loss_label\n20,{total / 10},1.0,1.0\n'
            f'300,{total},0.5,0.5\n')


def test_a_finished_demo_is_read_and_the_band_reported(tmp_path):
    finished_demo(tmp_path / 'a', 0.99, (0.62, 0.79, 0.90), (60, 200, 60, 80))
    finished_demo(tmp_path / 'b', 0.80, (0.55, 0.76, 0.89), (70, 220, 65, 90))
    results = []
    for name, seed in (('a', 1337), ('b', 7)):
        result = demo_band.read_run(tmp_path / name)
        result.update(seed=seed, kernel='default')
        results.append(result)
    assert results[0]['classifier'] == pytest.approx(99.0)
    assert results[0]['fcn8s'] == pytest.approx(90.0)
    assert results[0]['training_minutes'] == pytest.approx(400 / 60)
    assert demo_band.misses(results[0]) == []
    assert demo_band.misses(results[1]) == ['classifier']
    text = demo_band.table(results)
    assert '| band | 2 runs | 80.0-99.0 | 55.0-62.0 | 76.0-79.0 | 89.0-90.0 |' in text
    assert 'missed: classifier' in text
    slow = dict(results[0], training_minutes=9.5)
    assert demo_band.misses(slow) == ['time']
