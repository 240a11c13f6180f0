"""What a training run starts from, and the run a model of the table gets."""
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from fcn import nets, paths
from fcn.nets import UsageError
from fcn.training.trainer import FINAL_WEIGHTS, SNAPSHOT_DIR, Stage, StopRequest, latest_snapshot, train

# ---- what a run starts from -------------------------------------------------------------

INIT_CHOICES = ('reference', 'final', 'best')


@dataclass(frozen=True)
class InitSource:
    """One net's weights that training starts from."""
    weights: Path
    iteration: int | None  # the snapshot's iteration; None for final or base weights
    modality: str          # late fusion: the suffix of this net's layers; '' otherwise
    hint: str              # how to make the file when it is missing


def final_weights(model):
    return paths.RUNS_DIR / model / FINAL_WEIGHTS


def snapshot_weights(model, iteration):
    return paths.RUNS_DIR / model / SNAPSHOT_DIR / f'{model}_iter_{iteration}.caffemodel'


def best_snapshot(model):
    """The iteration of `model`'s best-validated snapshot still on disk (by the first
    head's mean IU in its val_log.json), or a UsageError saying what is missing."""
    log = paths.RUNS_DIR / model / 'val_log.json'
    if not log.is_file():
        raise UsageError(f'--init-from best needs {log}: train {model} first (`make {model}`)')
    scored = []
    for record in json.loads(log.read_text()):
        first_head = next(key for key in record if key != 'iteration')
        mean_iu = record[first_head]['mean_iu']
        if mean_iu is not None and snapshot_weights(model, record['iteration']).is_file():
            scored.append((mean_iu, record['iteration']))
    if not scored:
        raise UsageError(f'{log} names no validated iteration whose snapshot is in '
                         f'{paths.RUNS_DIR / model / SNAPSHOT_DIR}')
    return max(scored)[1]


def init_sources(spec, init_from='reference'):
    """What the table says training starts from, as InitSources (files not checked).

    A model of the table starts from its final weights, or (init_from 'reference') from
    the snapshot iteration the table names (late fusion), or ('best') from its
    best-validated snapshot; a name ending in .caffemodel is that file (relative to the
    repository); any other name is base weights made by surgery."""
    from models.specs import MODELS
    if init_from not in INIT_CHOICES:
        raise UsageError(f'--init-from {init_from!r}: choose one of {", ".join(INIT_CHOICES)}')
    if spec.init is None:
        return ()  # from scratch: the fillers of the prototxt
    sources = spec.init if isinstance(spec.init, tuple) else (spec.init,)
    iterations = spec.init_snapshots or (None,) * len(sources)
    result = []
    for source, iteration in zip(sources, iterations):
        if source.endswith('.caffemodel'):
            result.append(InitSource(paths.REPO / source, None, '',
                                     'fetch or make that weights file first'))
            continue
        if source not in MODELS:
            result.append(InitSource(paths.WEIGHTS_DIR / f'{source}.caffemodel', None, '',
                                     f'make it by surgery first (`make weights/{source}'
                                     f'.caffemodel`)'))
            continue
        if init_from == 'final':
            iteration = None
        elif init_from == 'best':
            iteration = best_snapshot(source)
        if iteration is None:
            path, hint = final_weights(source), f'train {source} first (`make {source}`)'
        else:
            path = snapshot_weights(source, iteration)
            hint = (f'train {source} (`make {source}`) and keep its snapshot of iteration '
                    f'{iteration}, or start from its final weights (--init-from final) or '
                    f'its best-validated snapshot (--init-from best)')
        result.append(InitSource(path, iteration, modality(source, sources), hint))
    return tuple(result)


def init_weights(spec, weights=None, init_from='reference'):
    """The (file, suffix) pairs training starts from; every file must exist."""
    if weights is not None:
        return ((Path(weights), ''),)
    pairs = []
    for source in init_sources(spec, init_from):
        if not source.weights.is_file():
            raise UsageError(f'{spec.name} starts from {source.weights}, which does not '
                             f'exist: {source.hint}')
        pairs.append((source.weights, source.modality))
    return tuple(pairs)


def widened_input(spec, weights=None):
    """(source layer, first convolution) when the first convolution was renamed because
    it sees more channels than the classifier (NYUD colour-depth) and training starts from
    base weights: the trainer fills it from conv1_1 as the reference's script did."""
    from models.specs import MODELS
    if spec.first_conv == 'conv1_1' or weights is not None or spec.init is None \
            or spec.init in MODELS:
        return ()
    return (('conv1_1', spec.first_conv),)


def modality(source, sources):
    """For a late fusion of nets (nyud-fcn32s-color, nyud-fcn32s-hha), the part of each
    name after their common prefix ("color", "hha") names that net's layers."""
    if len(sources) < 2:
        return ''
    prefix = os.path.commonprefix(list(sources))
    return source[len(prefix):]


# ---- the run ---------------------------------------------------------------------------

def run_settings(spec, **settings):
    """The given Stage settings (None: unset) over the table's: the run length, the
    validation cadence, and snapshots at the solver's interval or else at each validation."""
    settings = {key: value for key, value in settings.items() if value is not None}
    settings.setdefault('iterations', spec.iterations or spec.max_iter)
    settings.setdefault('test_every', spec.test_every)
    settings.setdefault('snapshot_every', spec.snapshot or spec.test_every)
    return settings


def stage_for_model(name, run_dir=None, weights=None, resume=None, init_from='reference',
                    **settings):
    """The Stage of a model of the table; `settings` are Stage fields (steps, ...)."""
    spec = nets.model_spec(name)
    run_dir = Path(run_dir) if run_dir else paths.RUNS_DIR / name
    if resume == 'auto':
        resume = latest_snapshot(run_dir)
    names = {h.label: nets.class_names(spec, h) for h in spec.heads}
    settings = run_settings(spec, **settings)
    stage = Stage(name=name, solver=nets.model_file(name, 'solver'), run_dir=run_dir,
                  heads=tuple(spec.heads), class_names=names, fresh_scores=spec.fresh_scores,
                  resume=Path(resume) if resume else None, **settings)
    if stage.resume is None:
        stage = replace(stage, init=init_weights(spec, weights, init_from),
                        widen_input=widened_input(spec, weights))
    return stage


def plan(name, weights=None, init_from='reference', **settings):
    """What training `name` from scratch will do, as plain data: checked by users before
    they spend GPU days, and by the tests against the reference's scripts."""
    spec = nets.model_spec(name)
    settings = run_settings(spec, **settings)
    solver = nets.read_solver(nets.model_file(name, 'solver'))
    if weights is not None:
        init = [{'weights': str(weights), 'iteration': None}]
    else:
        init = [{'weights': str(source.weights), 'iteration': source.iteration,
                 'exists': source.weights.is_file()}
                for source in init_sources(spec, init_from)]
    from google.protobuf import json_format
    return {
        'model': name,
        'iterations': settings.get('steps') or settings['iterations'],
        'test_every': settings['test_every'],
        'snapshot_every': settings['snapshot_every'],
        'init': init,
        'widen_input': [{'from': source, 'layer': layer}
                        for source, layer in widened_input(spec, weights)],
        'solver': json_format.MessageToDict(solver, preserving_proto_field_name=True),
    }


def run(stage, gpus=None):
    """Train a stage on the CPU or GPU already selected, or on `gpus` (one process each).
    Returns the exit status: 0 when finished, 128 + the signal's number when stopped."""
    if gpus:
        from fcn.training import multigpu
        return multigpu.launch(stage, gpus)
    stop = StopRequest()
    stop.install()
    return 0 if train(stage, stop) else 128 + stop.signum
