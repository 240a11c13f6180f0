"""The tree's rules that code review alone would not keep: orchestration that runs on the
system python3 imports only the standard library (and the project's own stdlib-only
modules); no module edits sys.path; the commands import the library, not one another."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fcn.paths import REPO

# What the Makefile, the SLURM job and the container run on the system python3, before or
# without the virtualenv.
SYSTEM_PYTHON_MODULES = ('pipeline.make_rules', 'pipeline.slurm', 'pipeline.container')
# The project's packages, found by their location: under -I neither the working
# directory nor any path file puts the repository on the path; -S: nor does the system's
# site set-up add its own modules.
PACKAGES = ('pipeline', 'models', 'data', 'fcn')
ISOLATED_IMPORT = '''
import importlib, importlib.util, json, sys
repo = sys.argv[1]
for name in sys.argv[2].split(','):
    spec = importlib.util.spec_from_file_location(
        name, f'{repo}/{name}/__init__.py', submodule_search_locations=[f'{repo}/{name}'])
    sys.modules[name] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
for name in sys.argv[3].split(','):
    importlib.import_module(name)
print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))
'''
SYSTEM_PYTHON = Path('/usr/bin/python3')


def project_files():
    """The project's Python files: its folders, not the virtualenv, runs or datasets."""
    folders = ('fcn', 'solve', 'models', 'layers', 'data', 'pipeline', 'checks', 'bench',
               'caffe-build', 'tests')
    return sorted(path for folder in folders for path in (REPO / folder).glob('**/*.py')
                  if not any(part.startswith('.') for part in path.relative_to(REPO).parts))


def imported_top_level(modules):
    python = str(SYSTEM_PYTHON) if SYSTEM_PYTHON.exists() else sys.executable
    result = subprocess.run([python, '-I', '-S', '-c', ISOLATED_IMPORT, str(REPO),
                             ','.join(PACKAGES), ','.join(modules)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def test_system_python_modules_import_only_the_standard_library():
    outside = imported_top_level(SYSTEM_PYTHON_MODULES) - set(sys.stdlib_module_names) \
        - set(PACKAGES) - {'__main__'}
    assert outside == set()


def test_the_isolated_import_would_see_a_module_outside_the_standard_library():
    # The check above can fail: the library's evaluation module needs numpy, and under -I
    # the system python3 has none (or it is reported as outside).
    try:
        names = imported_top_level(['fcn.evaluation'])
    except AssertionError as error:
        assert 'numpy' in str(error)
    else:
        assert 'numpy' in names - set(sys.stdlib_module_names)


@pytest.mark.parametrize('path', project_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_edits_sys_path(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == 'path' and \
                isinstance(node.value, ast.Name) and node.value.id == 'sys':
            parent_calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                            and isinstance(n.func, ast.Attribute) and n.func.value is node]
            assert not parent_calls, f'{path}:{node.lineno} edits sys.path'
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                text = ast.unparse(target)
                assert not text.startswith('sys.path'), f'{path}:{node.lineno} sets sys.path'


def test_commands_import_the_library_not_each_other():
    commands = {path.stem for path in (REPO / 'solve').glob('*.py')} - {'__init__'}
    for path in (REPO / 'solve').glob('*.py'):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or '']
            else:
                continue
            for name in names:
                assert name.split('.')[0] not in commands | {'solve'}, \
                    f'{path.name}:{node.lineno} imports the command {name}'
