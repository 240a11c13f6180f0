"""Local models: FCNs on a dataset of one's own, declared as data rather than code.

`solve/new_model.py NAME ...` writes models/local/NAME.json; models/specs.py reads every
such file into MODELS, so that `make NAME`, solve.py, score.py and infer.py know its
stages without an edit of the table. A declaration holds:

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
                    8), init (a model, base weights or a .caffemodel path: models/specs.py,
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
from dataclasses import dataclass
from pathlib import Path

LOCAL_DIR = Path(__file__).resolve().parent / 'local'
FORMAT = 1


class LocalModelError(SystemExit):
    """A declaration that cannot be read; the message names the file and the key. A
    SystemExit: every tool reads the table, and each stops with this message alone."""

    def __init__(self, message):
        super().__init__(f'error: {message}')
        self.message = message


@dataclass(frozen=True)
class LocalModel:
    name: str            # the family: `make NAME` trains its stages
    path: Path           # the declaration
    data_dir: str
    classes: tuple
    train_split: str
    val_split: str
    stages: tuple        # ModelSpec, coarse to fine


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
    'name': (_string, 'the stage\'s model name'),
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


def _checked(entries, keys, where, defaults=None):
    entries = {**(defaults or {}), **entries}
    unknown = sorted(set(entries) - set(keys))
    if unknown:
        raise LocalModelError(f'{where}: unknown key {unknown[0]!r} (known: {", ".join(keys)})')
    for key, (check, what) in keys.items():
        if key not in entries:
            raise LocalModelError(f'{where}: missing key {key!r} ({what})')
        if not check(entries[key]):
            raise LocalModelError(f'{where}: {key!r} must be {what}, not {entries[key]!r}')
    return entries


def from_dict(name, declaration, path):
    """The LocalModel of a declaration (as read from `path`), checked key by key."""
    from models.records import Head, ModelSpec, data_layer
    d = _checked(declaration, TOP_KEYS, str(path))
    layer = data_layer('layers.folder.FolderSegDataLayer', data_dir=d['data'],
                       layout=d['layout'], classes=len(d['classes']), mean=tuple(d['mean']))
    head = Head('score', 'label', len(d['classes']), class_names=tuple(d['classes']))
    stages = []
    for index, stage in enumerate(d['stages']):
        s = _checked(stage, STAGE_KEYS, f'{path}: stages[{index}]', STAGE_DEFAULTS)
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
    return LocalModel(name, Path(path), d['data'], tuple(d['classes']), d['train_split'],
                      d['val_split'], tuple(stages))


def read(path):
    path = Path(path)
    try:
        declaration = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LocalModelError(f'{path}: not a readable JSON declaration ({error}); fix it '
                              f'or declare the model again with solve/new_model.py') from None
    if not isinstance(declaration, dict):
        raise LocalModelError(f'{path}: a declaration is a JSON object')
    return from_dict(path.stem, declaration, path)


def read_all(folder=LOCAL_DIR, taken=()):
    """Every declaration in `folder`, in name order. A stage or family name that is
    already a model's (`taken`) or another declaration's is an error naming both."""
    models, owners = [], {name: 'models/specs.py' for name in taken}
    for path in sorted(Path(folder).glob('*.json')):
        model = read(path)
        for name in (model.name, *(stage.name for stage in model.stages)):
            if name in owners:
                raise LocalModelError(f'{path}: the name {name!r} is taken by {owners[name]}; '
                                      f'declare the model under another name')
            owners[name] = path
        models.append(model)
    return tuple(models)


def find(name):
    """The declared model `name` (models/specs.py's LOCAL_MODELS)."""
    from models.specs import LOCAL_MODELS
    for model in LOCAL_MODELS:
        if model.name == name:
            return model
    known = ', '.join(model.name for model in LOCAL_MODELS) or 'none'
    raise LocalModelError(f'no local model {name!r} in {LOCAL_DIR} (declared: {known}); '
                          f'declare it with solve/new_model.py')
