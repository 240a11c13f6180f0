"""What a training run starts from, and the run a model of the table gets."""
from dataclasses import dataclass, replace
from pathlib import Path

from fcn import caffemodel, nets, paths, prototxt, runs
from fcn.nets import UsageError
from fcn.training.trainer import StopRequest, TrainingRun, train

# ---- what a run starts from -------------------------------------------------------------

INIT_CHOICES = ('reference', 'final', 'best')


@dataclass(frozen=True)
class InitFile:
    """A weights file training starts from: an InitSource of the table found under
    paths.RUNS_DIR, paths.WEIGHTS_DIR or the repository, or (source None) the file given
    by --weights."""
    weights: Path
    source: runs.InitSource | None = None
    iteration: int | None = None  # the snapshot's iteration; None for final or base weights
    hint: str = ''                # how to make the file when it is missing

    @property
    def modality(self):
        return self.source.modality if self.source else ''


def init_file(source, init_from='reference'):
    """Where an InitSource's weights are: a model's final weights, or (init_from
    'reference') the snapshot the table names (late fusion), or ('best') its
    best-validated snapshot; base weights under paths.WEIGHTS_DIR; a file of the
    repository."""
    if source.kind == runs.FILE:
        return InitFile(paths.REPO / source.name, source,
                        hint='fetch or make that weights file first')
    if source.kind == runs.BASE:
        return InitFile(runs.base_weights(source.name), source,
                        hint=f'make it by surgery first (`make weights/{source.name}'
                             f'.caffemodel`)')
    run = runs.run_folder(source.name)
    iteration = source.iteration
    if init_from == 'final':
        iteration = None
    elif init_from == 'best':
        try:
            iteration = run.best_snapshot()
        except runs.RunError as e:
            raise UsageError(f'--init-from best: {e}') from e
    if iteration is None:
        return InitFile(run.final_weights, source,
                        hint=f'train {source.name} first (`make {source.name}`)')
    return InitFile(run.snapshot(iteration), source, iteration,
                    f'train {source.name} (`make {source.name}`) and keep its snapshot of '
                    f'iteration {iteration}, or start from its final weights (--init-from '
                    f'final) or its best-validated snapshot (--init-from best)')


def init_files(spec, weights=None, init_from='reference'):
    """The InitFiles training starts from (not checked): the file `weights`, else what
    the table names (runs.init_sources), found as `init_from` says."""
    if init_from not in INIT_CHOICES:
        raise UsageError(f'--init-from {init_from!r}: choose one of {", ".join(INIT_CHOICES)}')
    if weights is not None:
        return (InitFile(Path(weights)),)
    return tuple(init_file(source, init_from) for source in runs.init_sources(spec))


def init_weights(spec, weights=None, init_from='reference'):
    """init_files, each of the table's on disk (a missing --weights file is named when it
    is loaded)."""
    files = init_files(spec, weights, init_from)
    for file in files:
        if file.source is not None and not file.weights.is_file():
            raise UsageError(f'{spec.name} starts from {file.weights}, which does not exist: '
                             f'{file.hint}')
    return files


def held_layers(file):
    """The names of the layers of an InitFile's weights, read without loading them. A file
    not made yet is judged by what makes it: a model's run holds that model's first
    convolution; base weights (surgery carries the classifier's layers over) and other
    files hold conv1_1."""
    if file.weights.is_file():
        return {record.name for record in caffemodel.checked_layers(file.weights)}
    if file.source is not None and file.source.kind == runs.MODEL:
        return {nets.model_spec(file.source.name).first_conv}
    return {'conv1_1'}


def widened_input(spec, files):
    """(source layer, first convolution) pairs for the trainer to fill the net's first
    convolution from conv1_1, as the reference's NYUD colour-depth script did: when that
    convolution was renamed because it sees more channels than the classifier
    (conv1_1_bgrd) and the first weights training starts from (`files`: InitFiles) hold
    conv1_1 but not it. Weights that hold it (the same model's snapshot) are kept."""
    if spec.first_conv == 'conv1_1' or not files:
        return ()
    layers = held_layers(files[0])
    if spec.first_conv in layers or 'conv1_1' not in layers:
        return ()
    return (('conv1_1', spec.first_conv),)


# ---- the run ---------------------------------------------------------------------------

def run_settings(spec, **settings):
    """The given TrainingRun settings (None: unset) over the table's: the run length, the
    validation cadence, and snapshots at the solver's interval or else at each validation."""
    settings = {key: value for key, value in settings.items() if value is not None}
    settings.setdefault('iterations', spec.iterations or spec.max_iter)
    settings.setdefault('test_every', spec.test_every)
    settings.setdefault('snapshot_every', spec.snapshot or spec.test_every)
    return settings


def training_run(name, run_dir=None, weights=None, resume=None, init_from='reference',
                    **settings):
    """The TrainingRun of a model of the table; `settings` are TrainingRun fields (steps, ...)."""
    spec = nets.model_spec(name)
    run = runs.RunFolder(run_dir, name) if run_dir else runs.run_folder(name)
    if resume == 'auto':
        resume = run.latest_snapshot()
    names = {h.label: nets.class_names(spec, h) for h in spec.heads}
    settings = run_settings(spec, **settings)
    training = TrainingRun(name=name, solver=nets.model_file(name, 'solver'), run_dir=run.path,
                  heads=tuple(spec.heads), class_names=names, fresh_scores=spec.fresh_scores,
                  resume=Path(resume) if resume else None, **settings)
    if training.resume is None:
        files = init_weights(spec, weights, init_from)
        training = replace(training, init=tuple((file.weights, file.modality) for file in files),
                        widen_input=widened_input(spec, files))
    return training


def plan(name, weights=None, init_from='reference', **settings):
    """What training `name` from scratch will do, as plain data: checked by users before
    they spend GPU days, and by the tests against the reference's scripts."""
    spec = nets.model_spec(name)
    settings = run_settings(spec, **settings)
    solver = prototxt.read_solver(nets.model_file(name, 'solver'))
    files = init_files(spec, weights, init_from)
    if weights is not None:
        init = [{'weights': str(weights), 'iteration': None}]
    else:
        init = [{'weights': str(file.weights), 'iteration': file.iteration,
                 'exists': file.weights.is_file()} for file in files]
    from google.protobuf import json_format
    return {
        'model': name,
        'iterations': settings.get('steps') or settings['iterations'],
        'test_every': settings['test_every'],
        'snapshot_every': settings['snapshot_every'],
        'init': init,
        'widen_input': [{'from': source, 'layer': layer}
                        for source, layer in widened_input(spec, files)],
        'solver': json_format.MessageToDict(solver, preserving_proto_field_name=True),
    }


def launch(training, gpus=None):
    """Train a run on the CPU or GPU already selected, or on `gpus` (one process each).
    Returns the exit status: 0 when finished, 128 + the signal's number when stopped."""
    if gpus:
        from fcn.training import multigpu
        return multigpu.launch(training, gpus)
    stop = StopRequest()
    stop.install()
    return 0 if train(training, stop) else 128 + stop.signum
