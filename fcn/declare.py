"""A model of one's own declared on a dataset: what its training starts from, its chain of
stages and their solver values, and the declaration file (models/user/NAME.json) with its
prototxts written through the generators every net goes through. solve/new_model.py is the
command; its options reach `stages` and `declaration` as they are parsed."""
import json
import os
import re
import sys
import time
from pathlib import Path

from fcn import nets, runs
from fcn.errors import UsageError
from fcn.paths import REPO
from models import declared, registry
from models.declared import stage_name

# The base weights surgery makes from each classifier (the Makefile's weights/ rules).
CLASSIFIER_BASE_WEIGHTS = {'vgg16': 'vgg16-fcn', 'caffenet': 'alexnet-fcn',
                           'googlenet': 'googlenet-fcn', 'toy-vgg16': 'toy-vgg16-fcn'}
# The reference model whose solver each stage of a body takes (--solver paper), and the
# toy model's for every body (--solver adam).
PAPER_RECIPES = {('vgg16', '32'): 'voc-fcn32s', ('vgg16', '16'): 'voc-fcn16s',
                 ('vgg16', '8'): 'voc-fcn8s', ('vgg16', 'atonce'): 'voc-fcn8s-atonce',
                 ('alexnet', '32'): 'voc-fcn-alexnet', ('googlenet', '32'): 'voc-fcn-googlenet'}
ADAM_RECIPES = {'32': 'toy-fcn32s', '16': 'toy-fcn16s', '8': 'toy-fcn8s', 'atonce': 'toy-fcn32s'}
ATONCE_MODEL = 'voc-fcn8s-atonce'  # the skip scales of an at-once stage
STRIDES = ('32', '16', '8')
# Overridable solver values: option -> (declaration key, type).
SOLVER_OPTIONS = {'solver_type': str, 'normalize_loss': bool, 'base_lr': float,
                  'momentum': float, 'iter_size': int, 'max_iter': int, 'snapshot': int,
                  'test_every': int}
# Solver values copied from the recipe as they are (editable in the declaration).
RECIPE_FIELDS = ('lr_policy', 'power', 'weight_decay')


def make_targets():
    """The Makefile's own target names: a model may not shadow one."""
    text = (REPO / 'Makefile').read_text()
    return set(re.findall(r'^([A-Za-z0-9_.-]+):', text, re.M))


# ---- what training starts from -----------------------------------------------------

def resolve_source(name, weights_file):
    """(spec of the source net, first init, source stride or None, its class names or None).

    A classifier starts the chain from its FCN base weights; an FCN from its final weights
    or `weights_file`."""
    table = registry.load()
    models = table.models
    families = {model.name: model.stages[-1].name for model in table.declared}
    name = families.get(name, name)
    classifier = table.base_nets.get(name) or (
        models[name] if name in models and models[name].task == 'classification' else None)
    if classifier is not None:
        if weights_file:
            raise UsageError(f'--from-weights: {name} is a classifier, whose FCN base weights '
                             f'`make` makes by surgery; give --from-weights with an FCN only')
        if name not in CLASSIFIER_BASE_WEIGHTS:
            raise UsageError(f'--from {name}: no rule makes FCN base weights from it; '
                             f'start from one of {", ".join(CLASSIFIER_BASE_WEIGHTS)}')
        return classifier, CLASSIFIER_BASE_WEIGHTS[name], None, None
    if name not in models:
        problem = table.problem_for(name)
        if problem is not None:
            raise UsageError(f'--from {name}: {problem.why_not(name)}')
        raise UsageError(f'--from {name}: neither a classifier '
                         f'({", ".join(CLASSIFIER_BASE_WEIGHTS)}) nor a model (known: '
                         f'{", ".join(sorted(models))})')
    spec = models[name]
    if len(spec.modalities) > 1:
        raise UsageError(f'--from {name}: it takes {" + ".join(spec.modalities)} inputs; '
                         f'start from a net on one 3-channel image')
    init = name
    if weights_file == nets.RELEASED:
        from data.weights import RELEASED, local_path
        if name not in RELEASED:
            raise UsageError(f'--from-weights released: {name} has no released weights; the '
                             f'reference released: {", ".join(RELEASED)}')
        weights_file = local_path(name)
    if weights_file:
        path = Path(weights_file).resolve()
        if path.suffix != '.caffemodel' or re.search(r'\s', str(path)):
            raise UsageError(f'--from-weights {weights_file}: give a .caffemodel file whose '
                             f'path has no spaces')
        init = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
        if not path.is_file():
            print(f'note: {weights_file} does not exist yet: `make` must fetch or make it',
                  file=sys.stderr)
    names = nets.class_names(spec, spec.heads[0]) if len(spec.heads) == 1 else None
    return spec, init, spec.stride, names


def stage_keys(target, source_stride):
    """The chain's stages, coarse to fine: never coarser than the source FCN."""
    if target == 'atonce':
        return ['atonce']
    chain = [key for key in STRIDES if int(key) >= int(target)
             and (source_stride is None or int(key) <= source_stride)]
    return chain or [target]


# ---- the declaration ----------------------------------------------------------------

def per_stage(option, text, count, kind):
    """One value for every stage, or one per stage."""
    def convert(part):
        if kind is bool:
            if part.lower() not in ('true', 'false'):
                raise ValueError
            return part.lower() == 'true'
        return kind(part)
    try:
        values = [convert(part) for part in text.split(',')]
    except ValueError:
        raise UsageError(f'--{option.replace("_", "-")} {text}: not a {kind.__name__} '
                         f'(or a comma-separated list of them)') from None
    if len(values) not in (1, count):
        raise UsageError(f'--{option.replace("_", "-")} {text}: give one value, or one per '
                         f'stage ({count})')
    return values * count if len(values) == 1 else values


def stages(args, body, keys, first_init, fresh_scores):
    from models.specs import MODELS
    if body != 'vgg16' and keys != ['32']:
        raise UsageError(f'--stride {args.stride}: the {body} body has FCN-32s only (as in '
                         f'the paper); use --stride 32')
    entries = []
    for index, key in enumerate(keys):
        recipe = MODELS[PAPER_RECIPES[body, key] if args.solver == 'paper' else ADAM_RECIPES[key]]
        entries.append({
            'name': stage_name(args.name, key), 'stride': 8 if key == 'atonce' else int(key),
            'init': first_init if index == 0 else entries[-1]['name'],
            'skip_scales': list(MODELS[ATONCE_MODEL].skip_scales) if key == 'atonce' else [],
            'fresh_scores': fresh_scores and index == 0,
            **{field: getattr(recipe, field) for field in (*SOLVER_OPTIONS, *RECIPE_FIELDS)},
            # The run's length: what the reference's script ran (max_iter of the solver
            # file unless it said otherwise); a declared model's solver says it as it is.
            'max_iter': recipe.iterations or recipe.max_iter})
    for option, kind in SOLVER_OPTIONS.items():
        text = getattr(args, option)
        if text is not None:
            for entry, value in zip(entries, per_stage(option, text, len(entries), kind)):
                entry[option] = value
    return entries


def declaration(args, report):
    """The declaration's JSON data, from the arguments and the dataset check's findings."""
    from fcn.paths import data_root
    source, first_init, source_stride, source_classes = resolve_source(args.source,
                                                                       args.from_weights)
    if source.skip_scales and args.stride != 'atonce' and args.stride != '32':
        raise UsageError(f'--from {args.source}: an at-once FCN-8s scales its skips; '
                         f'declare --stride atonce (or 32) to fine-tune it')
    keys = stage_keys(args.stride, source_stride)
    fresh = (source_classes is not None and len(source_classes) == len(report.classes)
             and list(source_classes) != report.classes)
    data = Path(args.data).resolve()
    root = data_root().resolve()
    sizes = report.size_range()
    return {
        'format': 1,
        'data': str(data.relative_to(root)) if data.is_relative_to(root) else str(data),
        'layout': report.layout, 'classes': report.classes,
        'train_split': args.train_split, 'val_split': args.val_split,
        'val_size': len(report.splits[args.val_split]),
        'mean': [float(v) for v in args.mean.split(',')] if args.mean else report.mean_bgr(),
        'deploy_size': ([int(v) for v in args.deploy_size.split(',')] if args.deploy_size
                        else [sizes['height'][1], sizes['width'][1]]),
        'body': source.body, 'width': source.width, 'fc6_kernel': source.fc6_kernel,
        'source': args.source + (f' ({args.from_weights})' if args.from_weights else ''),
        'stages': stages(args, source.body, keys, first_init, fresh),
    }


# ---- writing ------------------------------------------------------------------------

def check_name(name, force):
    """The declaration of `name` that a new one replaces (a DeclaredModel, or a Problem:
    a file that cannot be used), or None."""
    if not declared.NAME_PATTERN.match(name):
        raise UsageError(f'{name!r}: a model name is {declared.NAME_RULE}')
    if name in make_targets():
        raise UsageError(f'{name!r} is a target of the Makefile; choose another name')
    table = registry.load()
    path = declared.user_dir() / f'{name}.json'
    own = next((model for model in table.declared if model.path == path), None)
    broken = next((problem for problem in table.problems if problem.path == path), None)
    if (own or broken) and not force:
        state = f', which cannot be used: {broken.reason}' if broken else ''
        raise UsageError(f'{name} is declared already ({declared.shown(path)}{state}); give '
                         f'--force to declare it again (its runs are kept aside)')
    own_stages = {stage.name for stage in own.stages} if own else set()
    taken = (set(table.models) - own_stages) | set(table.base_nets) | {
        model.name for model in table.declared if model is not own}
    clashes = sorted(taken & {name, *(stage_name(name, key) for key in declared.STAGE_STRIDES)})
    if clashes:
        raise UsageError(f'{name!r}: {", ".join(clashes)} is a model already; choose another '
                         f'name')
    return own or broken


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    tmp.write_text(json.dumps(data, indent=1) + '\n')
    os.replace(tmp, path)


def retire(previous, names):
    """Move the runs and prototxt folders of a former declaration (a DeclaredModel, or a
    Problem: the stage names it may have given) aside or away: its weights are not this
    model's (nothing is deleted but generated prototxts)."""
    import shutil
    from models import generate
    family = previous.path.stem
    stages = ([stage.name for stage in previous.stages]
              if isinstance(previous, declared.DeclaredModel)
              else sorted(previous.names - {family}))
    stamp = time.strftime('%Y%m%d-%H%M%S')
    for stage in stages:
        run = runs.run_folder(stage).path
        if run.exists():
            aside = run.with_name(f'{stage}.replaced-{stamp}')
            os.replace(run, aside)
            print(f'moved {run} aside to {aside}')
        folder = generate.MODELS_DIR / stage
        if stage not in names and folder.is_dir():
            shutil.rmtree(folder)
    runs.run_folder(family).data_check.unlink(missing_ok=True)


def write_model(model, data):
    """The declaration and every stage's prototxts."""
    from models import generate
    path = model.path
    write_json(path, data)
    for spec in model.stages:
        folder = generate.MODELS_DIR / spec.name
        new = not folder.is_dir()  # a folder that exists keeps what git was told about it
        for file, text in generate.render(spec, declared.shown(path)).items():
            generate.write(generate.MODELS_DIR / file, text)
        if new:
            (folder / '.gitignore').write_text(
                f'# A declared model ({declared.shown(path)}): `git add -f` to commit it.\n*\n')


def describe(model, data, path):
    yield (f'declared {model.name} in {declared.shown(path)}: {len(model.classes)} classes '
           f'({", ".join(model.classes)}) on {data["data"]} ({data["layout"]} layout)')
    yield (f'  body {data["body"]} at width {data["width"]:g} (fc6 {data["fc6_kernel"]}x'
           f'{data["fc6_kernel"]}), from {data["source"]}; mean (B G R) '
           + ' '.join(f'{v:.2f}' for v in data['mean']))
    yield ('  stage                   stride  starts from             solver  loss        '
           'base_lr  momentum  iter_size  max_iter  test_every  snapshot')
    for stage in data['stages']:
        loss = 'averaged' if stage['normalize_loss'] else 'summed'
        fresh = ' (fresh scores)' if stage['fresh_scores'] else ''
        yield (f'  {stage["name"]:<23} {stage["stride"]:>6}  {stage["init"] + fresh:<23} '
               f'{stage["solver_type"]:<6}  {loss:<10} {stage["base_lr"]:>8g}  '
               f'{stage["momentum"]:>8g}  {stage["iter_size"]:>9}  {stage["max_iter"]:>8}  '
               f'{stage["test_every"]:>10}  {stage["snapshot"]:>8}')
    chain = ' -> '.join(stage['name'] for stage in data['stages'])
    yield f'wrote the prototxts of {", ".join(f"models/{s.name}/" for s in model.stages)}'
    yield f'next: make {model.name}   (checks the data, trains {chain}, scores the last)'
