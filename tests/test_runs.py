"""The run folder's layout (fcn/runs.py), as the trainer, the commands and the make rules
name its files, and what a model of the table starts from."""
import json
from dataclasses import replace

import pytest

from fcn import paths, runs
from models.specs import MODELS


def test_every_file_of_a_run_folder(tmp_path):
    run = runs.RunFolder(tmp_path / 'somewhere', 'voc-fcn8s')
    named = {
        run.final_weights: 'final.caffemodel',
        run.snapshot(4000): 'snapshots/voc-fcn8s_iter_4000.caffemodel',
        run.snapshot(4000, runs.STATE): 'snapshots/voc-fcn8s_iter_4000.solverstate',
        run.scratch_prefix: '.snapshot-scratch/voc-fcn8s',
        run.solver: 'solver.prototxt',
        run.train_log: 'train_log.csv', run.val_log: 'val_log.json',
        run.loss_plot: 'loss.png', run.mean_iu_plot: 'mean_iu.png',
        run.score(): 'score.json', run.score('test'): 'score-test.json',
        run.score('seg11valid', (1, 3)): 'score-seg11valid-shard1of3.json',
        run.data_check: 'data-check.json', run.chain_record: 'slurm/chain.json',
        run.infer: 'infer',
    }
    for path, name in named.items():
        assert path == tmp_path / 'somewhere' / name
    with pytest.raises(ValueError, match='solverstate'):
        run.snapshot(4000, 'npz')
    with pytest.raises(ValueError, match='split'):
        run.score(shard=(0, 2))


def test_the_folders_of_a_model_and_of_the_released_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, 'RUNS_DIR', tmp_path / 'runs')
    monkeypatch.setattr(paths, 'WEIGHTS_DIR', tmp_path / 'weights')
    assert runs.run_folder('voc-fcn8s').path == tmp_path / 'runs/voc-fcn8s'
    assert runs.released_folder('voc-fcn8s').score() == \
        tmp_path / 'runs/released/voc-fcn8s/score.json'
    assert runs.base_weights('vgg16-fcn') == tmp_path / 'weights/vgg16-fcn.caffemodel'
    # make's paths: the same names behind the Makefile's variables
    assert str(runs.run_folder('voc-fcn8s', '$(RUNS)').final_weights) == \
        '$(RUNS)/voc-fcn8s/final.caffemodel'
    assert str(runs.released_folder('voc-fcn8s', '$(RUNS)').score()) == \
        '$(RUNS)/released/voc-fcn8s/score.json'
    assert str(runs.base_weights('vgg16-fcn', '$(BASE_WEIGHTS)')) == \
        '$(BASE_WEIGHTS)/vgg16-fcn.caffemodel'


def test_snapshots_are_ordered_by_iteration_not_by_name(tmp_path):
    run = runs.RunFolder(tmp_path, 'tiny')
    assert run.latest_snapshot() is None
    run.snapshots.mkdir()
    for iteration in (900, 1000, 20):
        run.snapshot(iteration, runs.STATE).write_bytes(b'')
    assert [runs.snapshot_iteration(p) for p in run.snapshot_states()] == [20, 900, 1000]
    assert run.latest_snapshot() == tmp_path / 'snapshots/tiny_iter_1000.solverstate'
    assert runs.snapshot_iteration('notes.txt') == -1


def test_the_best_snapshot_is_the_best_validated_one_still_on_disk(tmp_path):
    run = runs.RunFolder(tmp_path / 'nyud-fcn32s-color')
    with pytest.raises(runs.RunError, match=r'val_log.json does not exist: train '
                       r'nyud-fcn32s-color first \(`make nyud-fcn32s-color`\)'):
        run.best_snapshot()
    run.path.mkdir()
    # the first head decides; the second ranks the other way round
    scores = ((2000, 0.3, 0.7), (4000, 0.5, 0.5), (6000, None, None), (8000, 0.4, 0.6))
    run.val_log.write_text(json.dumps(
        [{'iteration': i, 'label': {'mean_iu': first}, 'other': {'mean_iu': second}}
         for i, first, second in scores]))
    with pytest.raises(runs.RunError, match='names no validated iteration'):
        run.best_snapshot()
    run.snapshots.mkdir()
    for iteration in (2000, 6000, 8000):
        run.snapshot(iteration).write_bytes(b'')
    assert run.best_snapshot() == 8000  # 4000 scored best, but its snapshot is gone
    assert [record['iteration'] for record in run.validations()] == [2000, 4000, 6000, 8000]


def test_init_sources_tell_models_base_weights_and_files_apart():
    table = {name: MODELS[name] for name in ('voc-fcn32s', 'nyud-fcn32s-color',
                                              'nyud-fcn32s-hha')}
    spec = MODELS['voc-fcn16s']
    assert runs.init_sources(replace(spec, init=None), table) == ()
    assert runs.init_sources(spec, table) == (runs.InitSource(runs.MODEL, 'voc-fcn32s'),)
    assert runs.init_sources(MODELS['voc-fcn32s'], table) == \
        (runs.InitSource(runs.BASE, 'vgg16-fcn'),)
    mine = replace(spec, init='weights/mine.caffemodel')
    assert runs.init_sources(mine, table) == (runs.InitSource(runs.FILE,
                                                              'weights/mine.caffemodel'),)
    # late fusion: each net at the snapshot the reference took, its layers by modality
    assert runs.init_sources(MODELS['nyud-fcn32s-color-hha'], table) == (
        runs.InitSource(runs.MODEL, 'nyud-fcn32s-color', 28000, 'color'),
        runs.InitSource(runs.MODEL, 'nyud-fcn32s-hha', 60000, 'hha'))
    # a name the table does not hold is base weights surgery makes
    assert runs.init_sources(spec, {}) == (runs.InitSource(runs.BASE, 'voc-fcn32s'),)
    # by default, the model table
    assert runs.init_sources(spec) == (runs.InitSource(runs.MODEL, 'voc-fcn32s'),)

