"""The committed prototxts are exactly what the generators emit (`make models`)."""
import shutil

import pytest

import caffe.coord_map
from models import generate, parts, registry
from models.specs import BASE_NETS, MODELS


@pytest.fixture(scope='module')
def files():
    return generate.render_all()


def test_committed_files_match_the_generators(files):
    assert generate.out_of_date(files) == [], 'run `make models` and commit the result'
    assert generate.stale_folders() == []


def test_every_net_has_its_files(files):
    expected = {f'{name}/{kind}.prototxt' for name in registry.load().models
                for kind in ('train', 'val', 'deploy', 'solver')}
    expected |= {f'{name}/deploy.prototxt' for name in BASE_NETS}
    assert set(files) == expected


def test_generation_is_deterministic(files):
    assert generate.render_all() == files
    assert all('\n# Do not edit' in text and text.startswith('# models/')
               for text in files.values())


def test_vgg16_and_alexnet_crops_are_caffe_coord_map_crops(monkeypatch):
    """For the VGG16 and AlexNet nets, Caffe's own coord_map.crop gives the same files."""
    names = [name for name, spec in {**MODELS, **BASE_NETS}.items()
             if spec.body in ('vgg16', 'alexnet')]
    committed = generate.render_all(names)
    monkeypatch.setattr(parts, 'crop', caffe.coord_map.crop)
    assert generate.render_all(names) == committed


def test_check_finds_an_edited_file_and_regeneration_restores_it(tmp_path, capsys):
    names = ['voc-fcn32s', 'vgg16']
    for name in names:
        shutil.copytree(generate.MODELS_DIR / name, tmp_path / name)
    edited = tmp_path / 'voc-fcn32s' / 'val.prototxt'
    edited.write_text(edited.read_text().replace('offset: 19', 'offset: 18'))
    (tmp_path / 'gone-model').mkdir()
    (tmp_path / 'gone-model' / 'deploy.prototxt').write_text('')

    assert generate.main(['--check', '--models-dir', str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f'out of date: {edited}' in err and 'gone-model' in err
    assert generate.main(['--models-dir', str(tmp_path), *names]) == 0
    assert generate.out_of_date(generate.render_all(names), tmp_path) == []
    assert 'offset: 19' in edited.read_text()


def test_toy_solvers_fix_the_seed_and_reference_solvers_do_not(files):
    """The demo is reproducible; the reference solvers stay as released (no random_seed)."""
    for name, spec in MODELS.items():
        seeded = 'random_seed: 1337' in files[f'{name}/solver.prototxt']
        assert seeded == (spec.dataset == 'toy'), name
