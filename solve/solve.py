#!/usr/bin/env python3
"""Train an FCN model of the table (models/specs.py) with Caffe's solver.

  solve.py MODEL [--cpu | --gpu N | --gpus 0,1,...] [--weights W] [--resume STATE|auto]
           [--init-from reference|final|best] [--steps N] [--test-every N] [--data-dir D]
  solve.py MODEL --plan     # what the run will do, as JSON; trains nothing

The solver comes from models/MODEL/solver.prototxt; the run is the reference's: as long
as its solve script ran (the table's `iterations`, not the solver's max_iter, which
Caffe's step() ignored) and scored every `test_every` iterations. Training starts from
what the table's `init` names: the final weights of the previous stage
(runs/<prev>/final.caffemodel), base weights made by surgery (weights/<name>.caffemodel),
or both nets of a late fusion at the snapshots the reference took; `--weights` overrides
it. A first convolution renamed for a wider input (NYUD colour-depth) is then filled from
conv1_1, and every upsampling (Deconvolution) layer with bilinear kernels. Between steps
the val net, sharing the training net's weights, is scored; losses go to
runs/MODEL/train_log.csv, scores to val_log.json, and both to loss.png and mean_iu.png.

Snapshots (runs/MODEL/snapshots/) are atomic: Caffe writes them into a scratch folder,
they are checked, and only then moved into place. Ctrl-C or SIGTERM finishes the current
iteration, snapshots and exits; `--resume` continues from a snapshot at its iteration
(`--resume auto`: from the newest one, if any). Finished training leaves
runs/MODEL/final.caffemodel, the file the next stage and `make` look for.

With --gpus, one process per GPU trains through Caffe's NCCL support: the data layers
shard the training set by rank and rank 0 alone scores, logs and snapshots.
"""
import argparse
import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import netfiles
from netfiles import UsageError
from trainer import FINAL_WEIGHTS, SNAPSHOT_DIR, Stage, StopRequest, latest_snapshot, train

WEIGHTS_DIR = netfiles.WEIGHTS_DIR

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
    return netfiles.RUNS_DIR / model / FINAL_WEIGHTS


def snapshot_weights(model, iteration):
    return netfiles.RUNS_DIR / model / SNAPSHOT_DIR / f'{model}_iter_{iteration}.caffemodel'


def best_snapshot(model):
    """The iteration of `model`'s best-validated snapshot still on disk (by the first
    head's mean IU in its val_log.json), or a UsageError saying what is missing."""
    log = netfiles.RUNS_DIR / model / 'val_log.json'
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
                         f'{netfiles.RUNS_DIR / model / SNAPSHOT_DIR}')
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
            result.append(InitSource(netfiles.REPO / source, None, '',
                                     'fetch or make that weights file first'))
            continue
        if source not in MODELS:
            result.append(InitSource(WEIGHTS_DIR / f'{source}.caffemodel', None, '',
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
    spec = netfiles.model_spec(name)
    run_dir = Path(run_dir) if run_dir else netfiles.RUNS_DIR / name
    if resume == 'auto':
        resume = latest_snapshot(run_dir)
    names = {h.label: netfiles.class_names(spec, h) for h in spec.heads}
    settings = run_settings(spec, **settings)
    stage = Stage(name=name, solver=netfiles.model_file(name, 'solver'), run_dir=run_dir,
                  heads=tuple(spec.heads), class_names=names, fresh_scores=spec.fresh_scores,
                  resume=Path(resume) if resume else None, **settings)
    if stage.resume is None:
        stage = replace(stage, init=init_weights(spec, weights, init_from),
                        widen_input=widened_input(spec, weights))
    return stage


def plan(name, weights=None, init_from='reference', **settings):
    """What training `name` from scratch will do, as plain data: checked by users before
    they spend GPU days, and by the tests against the reference's scripts."""
    spec = netfiles.model_spec(name)
    settings = run_settings(spec, **settings)
    solver = netfiles.read_solver(netfiles.model_file(name, 'solver'))
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


def build_parser():
    import devices
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='model name (models/specs.py)')
    devices.add_device_args(parser, multi_gpu=True)
    parser.add_argument('--weights', type=Path, metavar='W',
                        help="start from these weights instead of the table's init")
    parser.add_argument('--resume', metavar='STATE|auto',
                        help='continue from a .solverstate (auto: the newest in the run '
                        'folder, else start fresh)')
    parser.add_argument('--init-from', choices=INIT_CHOICES, default='reference',
                        help="which weights of the previous nets training starts from: "
                        "reference (the table's: final weights, or the snapshots the "
                        "reference took, as for late fusion), final, or best (each net's "
                        "best-validated snapshot)")
    parser.add_argument('--iterations', type=int, metavar='N',
                        help="train to iteration N (default: the table's run length, what "
                        "the reference's script ran)")
    parser.add_argument('--steps', type=int, metavar='N',
                        help='run N iterations from where training starts or resumes')
    parser.add_argument('--test-every', type=int, metavar='N',
                        help="validate every N iterations (default: the table's, as the "
                        "reference's script; 0: never)")
    parser.add_argument('--snapshot-every', type=int, metavar='N',
                        help="snapshot every N iterations (default: as the solver says, "
                        "else at every validation)")
    parser.add_argument('--plan', action='store_true',
                        help='print what the run will do (run length, cadence, initial '
                        'weights, solver values) as JSON and exit; needs no data')
    parser.add_argument('--val-images', type=int, metavar='N',
                        help='validate on the first N val images only (default: all)')
    parser.add_argument('--keep-snapshots', type=int, default=0, metavar='N',
                        help='keep only the newest N snapshots (default: all)')
    parser.add_argument('--run-dir', type=Path, metavar='DIR',
                        help='outputs (default: runs/MODEL)')
    parser.add_argument('--data-dir', metavar='DIR',
                        help='data root (default: $FCN_DATA_DIR or data/)')
    return parser


def main(argv=None):
    import devices
    args = build_parser().parse_args(argv)
    for flag in ('iterations', 'steps', 'test_every', 'snapshot_every', 'val_images',
                 'keep_snapshots'):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag in ('test_every', 'snapshot_every',
                                                        'keep_snapshots') else 1):
            raise UsageError(f'--{flag.replace("_", "-")} {value} is out of range')
    if args.resume not in (None, 'auto') and args.weights:
        raise UsageError('--resume and --weights exclude each other: a snapshot has weights')
    if args.plan:
        print(json.dumps(plan(args.model, args.weights, args.init_from,
                              iterations=args.iterations, steps=args.steps,
                              test_every=args.test_every,
                              snapshot_every=args.snapshot_every), indent=1))
        return 0
    netfiles.set_data_dir(args.data_dir)
    devices.select_device(args)
    stage = stage_for_model(args.model, args.run_dir, args.weights, args.resume,
                            args.init_from, iterations=args.iterations, steps=args.steps,
                            test_every=args.test_every,
                            snapshot_every=args.snapshot_every, val_images=args.val_images,
                            keep_snapshots=args.keep_snapshots)
    return run(stage, args.gpus)


def run(stage, gpus=None):
    """Train a stage on the CPU or GPU already selected, or on `gpus` (one process each).
    Returns the exit status: 0 when finished, 128 + the signal's number when stopped."""
    if gpus:
        import multigpu
        return multigpu.launch(stage, gpus)
    stop = StopRequest()
    stop.install()
    return 0 if train(stage, stop) else 128 + stop.signum


if __name__ == '__main__':
    sys.exit(main())
