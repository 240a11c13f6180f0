"""Declared models: FCNs on a dataset of one's own, declared as data rather than code.

`solve/new_model.py NAME ...` writes models/user/NAME.json; models/registry.py reads every
such file beside the reference table (models/specs.py), so that `make NAME`, solve.py,
score.py and infer.py know its stages without an edit of the table. A file that cannot be
used is a `Problem` (the file, why, what to do) that the tools report; it never stops them,
nor the other declarations. FCN_USER_MODELS_DIR names another folder of declarations.
A declaration holds:

  format            1
  data, layout      the dataset folder (relative: under the data root) and its layout
                    (data/check.py: "voc" or "simple")
  classes           the class names (its classes.txt when declared), background first
  train_split, val_split, val_size   the splits trained and scored, and the latter's size
  mean              B, G, R subtracted from every image
  deploy_size       [height, width] of deploy.prototxt's example input
  body, width, fc6_kernel            the body, as the net it starts from has it
  source            what training starts from, as given to new_model.py (for the reader)
  stages            the chain of stages, coarse to fine, each with: name, stride (32, 16,
                    8), init (a model, base weights or a .caffemodel path: models/records.py,
                    ModelSpec.init), skip_scales, fresh_scores, and its solver: solver_type,
                    normalize_loss, base_lr, momentum, iter_size, max_iter (the run's
                    length), snapshot and test_every (iterations between snapshots and
                    between scores of the val net), and optionally lr_policy ("fixed" or
                    "poly"), power (poly's exponent) and weight_decay (without them: the
                    reference's fixed rate and 5e-4)

Every value may be edited by hand (then `make models` writes the prototxts again).
Standard library only: the Makefile reads the table with the system python3.
"""
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from models.records import Head, ModelSpec, data_layer

REPO = Path(__file__).resolve().parents[1]
USER_DIR = REPO / 'models' / 'user'
FOLDER_VARIABLE = 'FCN_USER_MODELS_DIR'
FORMAT = 1
# A model name is a make target and a folder name.
NAME_PATTERN = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*$')
NAME_RULE = 'letters, digits, ".", "_" and "-", starting with a letter or digit'
# The finest strides a chain is declared down to (solve/new_model.py --stride).
STAGE_STRIDES = ('32', '16', '8', 'atonce')


def user_dir():
    """The folder of declarations: $FCN_USER_MODELS_DIR, else models/user/."""
    return Path(os.environ.get(FOLDER_VARIABLE) or USER_DIR)


def shown(path):
    """A declaration's path as the tools print it: relative to the repository if inside."""
    path = Path(path)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def stage_name(family, key):
    """The name solve/new_model.py gives the stage of stride `key` ('32', '16', '8' or
    'atonce') of the model `family`."""
    return f'{family}-fcn8s-atonce' if key == 'atonce' else f'{family}-fcn{key}s'


class DeclarationError(Exception):
    """A declaration that cannot be used: its file, why (naming the key), what to do."""

    def __init__(self, path, reason, fix=None):
        fix = fix or (f'correct it, or declare the model again (solve/new_model.py '
                      f'{Path(path).stem} --data DIR --from SOURCE --force)')
        super().__init__(f'{shown(path)}: {reason}; {fix}')
        self.path, self.reason, self.fix = Path(path), reason, fix


@dataclass(frozen=True)
class DeclaredModel:
    name: str            # the family: `make NAME` trains its stages
    path: Path           # the declaration
    data_dir: str
    classes: tuple
    train_split: str
    val_split: str
    stages: tuple        # ModelSpec, coarse to fine


@dataclass(frozen=True)
class Problem:
    """A declaration that cannot be used. `names`: the models it would declare, as far as
    they can be read (its file's name, the stage names solve/new_model.py gives, the
    stage names it holds), none of them a usable model's."""
    path: Path
    reason: str
    fix: str
    names: frozenset

    def __str__(self):
        return f'{shown(self.path)}: {self.reason}; {self.fix}'

    def why_not(self, name):
        """Why the model `name` (one of `names`) cannot be used."""
        return (f'{name} is declared in {shown(self.path)}, which cannot be used: '
                f'{self.reason}; {self.fix}')


def _string(value):
    return isinstance(value, str) and value != ''


def _number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _numbers(count):
    return lambda value: (isinstance(value, list) and len(value) == count
                          and all(_number(v) for v in value))


# key -> (check, what it must be)
TOP_KEYS = {
    'format': (lambda v: v == FORMAT, f'{FORMAT}'),
    'data': (_string, 'the dataset folder'),
    'layout': (lambda v: v in ('voc', 'simple'), '"voc" or "simple"'),
    'classes': (lambda v: isinstance(v, list) and len(v) >= 2 and all(map(_string, v))
                and len(set(v)) == len(v), 'a list of two or more distinct class names'),
    'train_split': (_string, 'a split name'),
    'val_split': (_string, 'a split name'),
    'val_size': (_positive_int, 'the number of images in the val split'),
    'mean': (_numbers(3), 'three numbers, B G R'),
    'deploy_size': (lambda v: isinstance(v, list) and len(v) == 2
                    and all(map(_positive_int, v)), '[height, width]'),
    'body': (lambda v: v in ('vgg16', 'alexnet', 'googlenet'),
             '"vgg16", "alexnet" or "googlenet"'),
    'width': (lambda v: _number(v) and v > 0, 'a positive number'),
    'fc6_kernel': (_positive_int, 'a positive integer'),
    'source': (_string, 'what training starts from'),
    'stages': (lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(s, dict)
                                                                     for s in v),
               'a list of stages'),
}
STAGE_KEYS = {
    'name': (lambda v: isinstance(v, str) and NAME_PATTERN.match(v) is not None,
             f'the stage\'s model name ({NAME_RULE})'),
    'stride': (lambda v: v in (32, 16, 8), '32, 16 or 8'),
    'init': (_string, 'a model name, base weights name or .caffemodel path'),
    'skip_scales': (lambda v: isinstance(v, list) and len(v) in (0, 2)
                    and all(map(_number, v)), '[] or the two at-once factors'),
    'fresh_scores': (lambda v: isinstance(v, bool), 'true or false'),
    'solver_type': (lambda v: v in ('SGD', 'Adam'), '"SGD" or "Adam"'),
    'normalize_loss': (lambda v: isinstance(v, bool), 'true or false'),
    'base_lr': (lambda v: _number(v) and v > 0, 'a positive number'),
    'momentum': (lambda v: _number(v) and 0 <= v < 1, 'a number in [0, 1)'),
    'iter_size': (_positive_int, 'a positive integer'),
    'max_iter': (_positive_int, 'a positive integer'),
    'snapshot': (_positive_int, 'a positive integer'),
    'test_every': (_positive_int, 'a positive integer'),
    'lr_policy': (lambda v: v in ('fixed', 'poly'), '"fixed" or "poly"'),
    'power': (lambda v: v is None or (_number(v) and v > 0), 'a positive number or null'),
    'weight_decay': (lambda v: _number(v) and v >= 0, 'a number >= 0'),
}
# Stage keys a declaration may leave out (those written before they existed): the
# reference solvers' values.
STAGE_DEFAULTS = {'lr_policy': 'fixed', 'power': None, 'weight_decay': 0.0005}


def _checked(entries, keys, path, where='', defaults=None):
    entries = {**(defaults or {}), **entries}
    unknown = sorted(set(entries) - set(keys))
    if unknown:
        raise DeclarationError(path, f'{where}unknown key {unknown[0]!r} (known: '
                               f'{", ".join(keys)})')
    for key, (check, what) in keys.items():
        if key not in entries:
            raise DeclarationError(path, f'{where}missing key {key!r} ({what})')
        if not check(entries[key]):
            raise DeclarationError(path, f'{where}{key!r} must be {what}, not '
                                   f'{entries[key]!r}')
    return entries


def from_dict(name, declaration, path):
    """The DeclaredModel of a declaration (as read from `path`), checked key by key."""
    if not NAME_PATTERN.match(name):
        raise DeclarationError(path, f'{name!r} is no model name ({NAME_RULE})',
                               'rename the file')
    d = _checked(declaration, TOP_KEYS, path)
    layer = data_layer('layers.folder.FolderSegDataLayer', data_dir=d['data'],
                       layout=d['layout'], classes=len(d['classes']), mean=tuple(d['mean']))
    head = Head('score', 'label', len(d['classes']), class_names=tuple(d['classes']))
    stages = []
    for index, stage in enumerate(d['stages']):
        s = _checked(stage, STAGE_KEYS, path, f'stages[{index}]: ', STAGE_DEFAULTS)
        stages.append(ModelSpec(
            s['name'], dataset='folder', body=d['body'], stride=s['stride'], heads=(head,),
            init=s['init'], train_split=d['train_split'], val_split=d['val_split'],
            train_data=layer, val_data=layer, val_size=d['val_size'],
            base_lr=float(s['base_lr']), momentum=float(s['momentum']),
            iter_size=s['iter_size'], max_iter=s['max_iter'], width=float(d['width']),
            fc6_kernel=d['fc6_kernel'], skip_scales=tuple(s['skip_scales']),
            normalize_loss=s['normalize_loss'], deploy_size=tuple(d['deploy_size']),
            solver_type=s['solver_type'], snapshot=s['snapshot'], test_every=s['test_every'],
            fresh_scores=s['fresh_scores'], lr_policy=s['lr_policy'], power=s['power'],
            weight_decay=float(s['weight_decay'])))
    return DeclaredModel(name, Path(path), d['data'], tuple(d['classes']), d['train_split'],
                         d['val_split'], tuple(stages))


def read_json(path):
    """The JSON object of a declaration file, or a DeclarationError saying why not."""
    try:
        declaration = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DeclarationError(path, f'not a readable JSON declaration ({error})') from None
    if not isinstance(declaration, dict):
        raise DeclarationError(path, 'a declaration is a JSON object, not '
                               f'{type(declaration).__name__}')
    return declaration


def read(path):
    """The DeclaredModel of one file, or a DeclarationError."""
    return from_dict(Path(path).stem, read_json(path), path)


def names_in(path, declaration):
    """The names a declaration would give its models, as far as they can be read: its
    file's name, the stage names new_model.py gives, those of its stages."""
    stages = declaration.get('stages') if isinstance(declaration, dict) else None
    held = [stage['name'] for stage in stages if isinstance(stage, dict)
            and isinstance(stage.get('name'), str)] if isinstance(stages, list) else []
    family = Path(path).stem
    return {family, *(stage_name(family, key) for key in STAGE_STRIDES), *held}


def read_all(folder=None, taken=()):
    """(declared models, problems): the declarations in `folder` (default: user_dir()),
    in name order, each either a DeclaredModel or a Problem. A family or stage name that
    is a reference model's (`taken`), an earlier declaration's or its own twice makes the
    declaration a problem naming the owner."""
    models, failed, owners = [], [], dict.fromkeys(taken, 'models/specs.py')
    for path in sorted(Path(folder or user_dir()).glob('*.json')):
        declaration = None
        try:
            declaration = read_json(path)
            model = from_dict(path.stem, declaration, path)
            names = [model.name, *(stage.name for stage in model.stages)]
            for index, name in enumerate(names):
                owner = owners.get(name) or (shown(path) if name in names[:index] else None)
                if owner:
                    raise DeclarationError(path, f'the name {name!r} is taken by {owner}',
                                           'declare the model under another name '
                                           '(solve/new_model.py) and delete this file')
        except DeclarationError as error:
            failed.append((error, names_in(path, declaration)))
            continue
        owners.update(dict.fromkeys(names, shown(path)))
        models.append(model)
    problems = [Problem(error.path, error.reason, error.fix, frozenset(names - set(owners)))
                for error, names in failed]
    return tuple(models), tuple(problems)
