"""The model table as the tools read it (models/registry.py): the reference table and the
models a user declared, where a declaration that cannot be used is reported by every tool
and breaks none: not an import, not the make rules, not training another model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data import check
from fcn import nets, paths
from fcn.paths import REPO
from models import declared, generate, registry, specs
from fcn import declare

SYSTEM_PYTHON = Path('/usr/bin/python3')


def declaration(family, stages=((32, None),), **changes):
    """A valid declaration of `family`: a chain from the toy classifier's base weights,
    one stage per (stride, name); name None is the one new_model.py gives."""
    chain, init = [], 'toy-vgg16-fcn'
    for stride, name in stages:
        name = name or f'{family}-fcn{stride}s'
        chain.append(dict(name=name, stride=stride, init=init, skip_scales=[],
                          fresh_scores=False, solver_type='Adam', normalize_loss=True,
                          base_lr=3e-4, momentum=0.9, iter_size=1, max_iter=10, snapshot=5,
                          test_every=5))
        init = name
    return {'format': 1, 'data': family, 'layout': 'simple',
            'classes': ['background', 'red', 'yellow'], 'train_split': 'train',
            'val_split': 'val', 'val_size': 2, 'mean': [128, 128, 128],
            'deploy_size': [64, 64], 'body': 'vgg16', 'width': 0.125, 'fc6_kernel': 4,
            'source': 'toy-vgg16', 'stages': chain, **changes}


@pytest.fixture
def user_models(tmp_path):
    """A folder of declarations: one valid (good: FCN-32s -> 16s), one that is not JSON,
    one of the wrong body whose stage has a name of its own, one that takes a reference
    model's name."""
    folder = tmp_path / 'user'
    folder.mkdir()
    (folder / 'good.json').write_text(json.dumps(declaration('good', ((32, None), (16, None)))))
    (folder / 'garbled.json').write_text('{"format": 1, "data": ')
    (folder / 'wrong.json').write_text(json.dumps(declaration('wrong', ((32, 'odd-stage'),),
                                                              body='resnet')))
    (folder / 'clash.json').write_text(json.dumps(declaration('clash', ((32, 'voc-fcn32s'),))))
    return folder


BROKEN = ('clash.json', 'garbled.json', 'wrong.json')


def test_the_reference_table_reads_no_user_file(user_models):
    """Imported in a fresh interpreter, models.specs opens and lists nothing in the
    folder; models.registry, the oracle that the watch sees such reads, does."""
    watch = '''
import sys
folder, module = sys.argv[1], sys.argv[2]
seen = []
def hook(event, args):
    if event in ('open', 'os.scandir', 'os.listdir') and args and folder in str(args[0]):
        seen.append(event)
sys.addaudithook(hook)
__import__(module)
if module == 'models.registry':
    sys.modules[module].load()
print(sorted(set(seen)), 'models.declared' in sys.modules)
'''
    env = {**os.environ, declared.FOLDER_VARIABLE: str(user_models)}

    def reads(module):
        done = subprocess.run([sys.executable, '-c', watch, str(user_models), module],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()
    assert reads('models.specs') == ['[]', 'False']
    assert 'open' in ' '.join(reads('models.registry'))


def test_the_registry_holds_the_valid_declarations_and_names_the_broken_files(user_models):
    table = registry.load(user_models)
    good, = table.declared
    assert good.name == 'good' and [s.name for s in good.stages] == ['good-fcn32s',
                                                                     'good-fcn16s']
    assert table.models['good-fcn16s'].init == 'good-fcn32s'
    assert table.spec('good-fcn32s') is good.stages[0]
    # The reference table is whole, and a clash does not replace its model.
    assert {name: table.models[name] for name in specs.MODELS} == specs.MODELS
    assert table.models['voc-fcn32s'] is specs.MODELS['voc-fcn32s']
    assert dict(table.base_nets) == specs.BASE_NETS
    assert set(table.models) == set(specs.MODELS) | {'good-fcn32s', 'good-fcn16s'}

    problems = {problem.path.name: problem for problem in table.problems}
    assert sorted(problems) == list(BROKEN)
    for name, problem in problems.items():
        line = str(problem)
        assert str(user_models / name) in line and '\n' not in line
        assert 'solve/new_model.py' in problem.fix
    assert 'not a readable JSON declaration' in problems['garbled.json'].reason
    assert "'body' must be" in problems['wrong.json'].reason
    assert "'voc-fcn32s' is taken by models/specs.py" in problems['clash.json'].reason

    # A name a broken file declares (by new_model.py's naming, or its own stage names)
    # says which file and why; a name nothing declares lists the known models.
    for name, file in (('garbled-fcn32s', 'garbled.json'), ('garbled', 'garbled.json'),
                       ('odd-stage', 'wrong.json'), ('wrong-fcn8s', 'wrong.json')):
        with pytest.raises(registry.UnknownModel, match='cannot be used') as error:
            table.spec(name)
        assert str(user_models / file) in str(error.value)
    with pytest.raises(registry.UnknownModel, match="unknown model 'nothing'.*good-fcn16s"):
        table.spec('nothing')
    assert table.declared_model('good') is good
    with pytest.raises(registry.UnknownModel, match='garbled.json'):
        table.declared_model('garbled')


def test_the_registry_follows_the_folder(user_models, monkeypatch):
    monkeypatch.setenv(declared.FOLDER_VARIABLE, str(user_models))
    first = registry.load()
    assert registry.load() is first  # unchanged files: read once
    (user_models / 'garbled.json').write_text(json.dumps(declaration('garbled')))
    mended = registry.load()
    assert [model.name for model in mended.declared] == ['garbled', 'good']
    assert nets.model_spec('garbled-fcn32s') is mended.models['garbled-fcn32s']
    (user_models / 'good.json').unlink()
    assert 'good-fcn32s' not in registry.load().models
    assert registry.load(user_models.parent / 'none').declared == ()


def test_model_spec_and_the_data_check_name_the_broken_file(user_models, monkeypatch):
    monkeypatch.setenv(declared.FOLDER_VARIABLE, str(user_models))
    assert nets.model_spec('toy-fcn32s') is specs.MODELS['toy-fcn32s']
    with pytest.raises(nets.UsageError, match=f'{user_models / "wrong.json"}, which cannot'):
        nets.model_spec('odd-stage')
    with pytest.raises(nets.UsageError, match=f'{user_models / "garbled.json"}, which cannot'):
        check.main(['--model', 'garbled'])


def test_generate_skips_broken_declarations_and_keeps_their_folders(user_models, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.setenv(declared.FOLDER_VARIABLE, str(user_models))
    files = generate.render_all(['good-fcn32s', 'toy-fcn32s'])
    assert files['good-fcn32s/solver.prototxt'].startswith(
        f'# models/good-fcn32s/solver.prototxt: generated by `make models` from '
        f'{user_models / "good.json"}.')
    assert 'from models/specs.py.' in files['toy-fcn32s/solver.prototxt'].splitlines()[0]
    # The folders a broken declaration wrote before it broke are its own, not stale.
    models_dir = tmp_path / 'models'
    for folder in ('garbled-fcn32s', 'odd-stage', 'gone-fcn32s'):
        (models_dir / folder).mkdir(parents=True)
        (models_dir / folder / 'deploy.prototxt').write_text('')
    assert generate.stale_folders(models_dir) == ['gone-fcn32s']

    assert generate.main(['--models-dir', str(models_dir), 'good-fcn32s']) == 0
    assert (models_dir / 'good-fcn32s/train.prototxt').is_file()
    err = capsys.readouterr().err
    assert [line.split(': ')[:2] for line in err.splitlines()] == [
        ['warning', str(user_models / name)] for name in BROKEN]


def test_check_is_unaffected_by_broken_declarations(user_models, monkeypatch, capsys):
    for name in ('good.json', 'clash.json'):
        (user_models / name).unlink()
    monkeypatch.setenv(declared.FOLDER_VARIABLE, str(user_models))
    assert generate.main(['--check']) == 0
    err = capsys.readouterr().err
    assert 'garbled.json' in err and 'wrong.json' in err and 'out of date' not in err


def test_declaring_over_a_broken_file_needs_force_and_moves_its_runs_aside(
        user_models, tmp_path, monkeypatch):
    monkeypatch.setenv(declared.FOLDER_VARIABLE, str(user_models))
    with pytest.raises(nets.UsageError, match=r'garbled is declared already \(.*garbled.json, '
                                              r'which cannot be used: not a readable JSON'):
        declare.check_name('garbled', force=False)
    previous = declare.check_name('garbled', force=True)
    assert previous.path == user_models / 'garbled.json'
    # Its runs are not the new declaration's weights; its prototxt folders that the new
    # chain does not write again are removed.
    runs_dir, models_dir = tmp_path / 'runs', tmp_path / 'models'
    monkeypatch.setattr(paths, 'RUNS_DIR', runs_dir)
    monkeypatch.setattr(generate, 'MODELS_DIR', models_dir)
    for name in ('garbled-fcn32s', 'garbled-fcn16s', 'toy-fcn32s'):
        (runs_dir / name).mkdir(parents=True)
        (models_dir / name).mkdir(parents=True)
    declare.retire(previous, {'garbled-fcn32s'})
    assert sorted(path.name.split('.')[0] for path in runs_dir.iterdir()) == [
        'garbled-fcn16s', 'garbled-fcn32s', 'toy-fcn32s']
    assert (runs_dir / 'toy-fcn32s').is_dir() and not (runs_dir / 'garbled-fcn32s').exists()
    assert sorted(path.name for path in models_dir.iterdir()) == ['garbled-fcn32s',
                                                                   'toy-fcn32s']


def system_python():
    return str(SYSTEM_PYTHON) if SYSTEM_PYTHON.exists() else sys.executable


def test_make_rules_on_the_system_python_report_broken_declarations(user_models):
    env = {key: value for key, value in os.environ.items() if key != 'PYTHONPATH'}
    env[declared.FOLDER_VARIABLE] = str(user_models)
    done = subprocess.run([system_python(), '-m', 'pipeline.make_rules'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rules = done.stdout.splitlines()
    assert 'good: | runs/good/data-check.json $(RUNS)/good-fcn16s/score.json' in rules
    assert f'runs/good/data-check.json: {user_models / "good.json"} | $(VENV_STAMP)' in rules
    assert ('$(RUNS)/good-fcn16s/final.caffemodel: $(RUNS)/good-fcn32s/final.caffemodel '
            '| runs/good/data-check.json caffe') in rules
    assert ('$(RUNS)/good-fcn32s/final.caffemodel: $(BASE_WEIGHTS)/toy-vgg16-fcn.caffemodel '
            '| runs/good/data-check.json caffe') in rules
    for name in specs.MODELS:
        assert any(rule.startswith(f'{name}: | ') for rule in rules), name
    assert not any(rule.startswith(('odd-stage:', 'garbled-fcn32s:')) for rule in rules)
    # One line on stderr per broken file, naming it.
    warnings = done.stderr.splitlines()
    assert [line.split(': ')[1] for line in warnings] == [str(user_models / name)
                                                         for name in BROKEN]

    # `make garbled` fails with that line; `make good` and the toy chain have their rules.
    makefile = user_models.parent / 'rules.mk'
    makefile.write_text(done.stdout)
    failed = subprocess.run(['make', '-f', str(makefile), 'garbled'], capture_output=True,
                            text=True, timeout=60)
    assert failed.returncode != 0
    assert f'error: {user_models / "garbled.json"}: not a readable JSON' in failed.stderr


def test_solve_plans_a_model_beside_a_broken_declaration_and_names_it_for_its_own(user_models):
    env = {**os.environ, declared.FOLDER_VARIABLE: str(user_models)}

    def solve(*argv):
        return subprocess.run([sys.executable, 'solve/solve.py', *argv, '--plan'], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)
    done = solve('toy-fcn32s')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)['model'] == 'toy-fcn32s'
    for name, file in (('garbled-fcn32s', 'garbled.json'), ('odd-stage', 'wrong.json')):
        done = solve(name)
        assert done.returncode != 0
        line, = done.stderr.strip().splitlines()
        assert str(user_models / file) in line and 'cannot be used' in line, done.stderr
