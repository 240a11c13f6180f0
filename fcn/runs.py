"""A training run's folder, file by file, and what a model of the table starts from.

Every name a run leaves is defined here, once: the trainer writes them, the commands,
reports and checks read them, and the make rules (pipeline/make_rules.py) and the SLURM
submission (pipeline/slurm.py) spell them with make's $(RUNS) in front. Only the
standard library: those two run on the system python3.

  runs/MODEL/                   run_folder(MODEL); any --run-dir has the same layout
    final.caffemodel            the weights training ends with
    snapshots/MODEL_iter_N.caffemodel, MODEL_iter_N.solverstate
    .snapshot-scratch/          where Caffe writes a snapshot before it is checked
    solver.prototxt             the solver Caffe is given
    train_log.csv, val_log.json, loss.png, mean_iu.png
    score.json                  the score on the model's val split (what make and the
                                reports read); score-SPLIT.json, score-SPLIT-shardIofN.json
    score-images.npz            beside each score JSON (score-SPLIT-images.npz, ...): per
                                image and class the intersection, ground truth and
                                prediction pixel counts (fcn.evaluation.save_image_counts),
                                written before the JSON; absent for scores made without them
    score-confusion.png         the confusion matrix, rows normalised
    score-shards/I-of-N.npz     the histograms and per-image counts of sharded scoring
    predictions/ID.png          the predicted class ids of each val image, palette PNGs
                                (predictions/LABEL/ID.png for nets of several heads);
                                predictions-SPLIT/ for another split
    data-check.json             a declared model's dataset check
    slurm/                      SLURM job logs and the submitted chain (chain.json)
    infer/                      infer.py's output
  runs/released/MODEL/          released_folder(MODEL): the reference release's weights,
                                scored and run here, in the same layout
  runs/page/                    the results page of every scored run (fcn/reports/page.py)
"""
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from fcn import paths

FINAL_WEIGHTS = 'final.caffemodel'
SNAPSHOT_DIR = 'snapshots'
SCRATCH_DIR = '.snapshot-scratch'
SOLVER = 'solver.prototxt'
TRAIN_LOG = 'train_log.csv'
VAL_LOG = 'val_log.json'
LOSS_PLOT = 'loss.png'
MEAN_IU_PLOT = 'mean_iu.png'
SCORE = 'score.json'
SCORE_SHARDS = 'score-shards'
IMAGE_COUNTS_SUFFIX = '-images.npz'
PREDICTIONS_DIR = 'predictions'
PAGE_DIR = 'page'
DATA_CHECK = 'data-check.json'
SLURM_DIR = 'slurm'
CHAIN_RECORD = 'chain.json'
INFER_DIR = 'infer'
RELEASED = 'released'
WEIGHTS, STATE = 'caffemodel', 'solverstate'  # the two files of a snapshot


class RunError(LookupError):
    """A run folder lacks a file that was asked for; the message names it."""


def snapshot_iteration(path):
    """The iteration in a snapshot's file name (MODEL_iter_N.solverstate or .caffemodel);
    -1 for any other name."""
    match = re.search(rf'_iter_(\d+)\.({WEIGHTS}|{STATE})$', str(path))
    return int(match.group(1)) if match else -1


class InFolder:
    """A file or folder of a run folder, by its path below it: read on a RunFolder it is a
    Path (run.train_log)."""

    def __init__(self, *parts):
        self.parts = parts

    def __get__(self, run, owner=None):
        return self if run is None else run.path.joinpath(*self.parts)


class RunFolder:
    """The files of one training run. `path` may also be a make path ('$(RUNS)/MODEL'):
    the names are then make's. `model` prefixes the snapshot files (default: the folder's
    name)."""

    def __init__(self, path, model=None):
        self.path = Path(path)
        self.model = model or self.path.name

    def __repr__(self):
        return f'RunFolder({str(self.path)!r}, {self.model!r})'

    final_weights = InFolder(FINAL_WEIGHTS)
    snapshots = InFolder(SNAPSHOT_DIR)
    scratch = InFolder(SCRATCH_DIR)
    solver = InFolder(SOLVER)
    train_log = InFolder(TRAIN_LOG)
    val_log = InFolder(VAL_LOG)
    loss_plot = InFolder(LOSS_PLOT)
    mean_iu_plot = InFolder(MEAN_IU_PLOT)
    data_check = InFolder(DATA_CHECK)
    slurm = InFolder(SLURM_DIR)
    chain_record = InFolder(SLURM_DIR, CHAIN_RECORD)
    infer = InFolder(INFER_DIR)

    @property
    def scratch_prefix(self):
        """Caffe's snapshot_prefix: its snapshots land in the scratch folder."""
        return self.scratch / self.model

    def snapshot_name(self, iteration, kind=WEIGHTS):
        if kind not in (WEIGHTS, STATE):
            raise ValueError(f'a snapshot is a {WEIGHTS} or a {STATE}, not {kind!r}')
        return f'{self.model}_iter_{iteration}.{kind}'

    def snapshot(self, iteration, kind=WEIGHTS):
        """The snapshot of `iteration`: its weights (kind 'caffemodel') or its solver state
        ('solverstate')."""
        return self.snapshots / self.snapshot_name(iteration, kind)

    def snapshot_states(self):
        """The solver states on disk, oldest iteration first."""
        return sorted(self.snapshots.glob(f'*.{STATE}'), key=snapshot_iteration)

    def latest_snapshot(self):
        """The newest solver state, or None."""
        states = self.snapshot_states()
        return states[-1] if states else None

    def validations(self):
        """val_log.json's records ({'iteration': N, head label: metrics}), [] without it."""
        return json.loads(self.val_log.read_text()) if self.val_log.is_file() else []

    def best_snapshot(self):
        """The iteration of the best-validated snapshot whose weights are still on disk (by
        the first head's mean IU in val_log.json); a RunError saying what is missing."""
        if not self.val_log.is_file():
            raise RunError(f'{self.val_log} does not exist: train {self.model} first '
                           f'(`make {self.model}`)')
        scored = []
        for record in self.validations():
            first_head = next(key for key in record if key != 'iteration')
            mean_iu = record[first_head]['mean_iu']
            if mean_iu is not None and self.snapshot(record['iteration']).is_file():
                scored.append((mean_iu, record['iteration']))
        if not scored:
            raise RunError(f'{self.val_log} names no validated iteration whose snapshot is '
                           f'in {self.snapshots}')
        return max(scored)[1]

    def score(self, split=None, shard=None):
        """score.json (no split: the model's val split, whole); else score-SPLIT.json, or
        score-SPLIT-shardIofN.json for the shard (I, N)."""
        if split is None:
            if shard is not None:
                raise ValueError('a shard\'s score names its split')
            return self.path / SCORE
        suffix = '' if shard is None else f'-shard{shard[0]}of{shard[1]}'
        return self.path / f'score-{split}{suffix}.json'

    def predictions(self, split=None):
        """The folder of the predictions scoring saves: predictions/ for the model's val
        split (split None), predictions-SPLIT/ for another."""
        return self.path / (PREDICTIONS_DIR if split is None else f'{PREDICTIONS_DIR}-{split}')


def image_counts_file(score_path):
    """The per-image counts beside a score JSON: score.json -> score-images.npz."""
    score_path = Path(score_path)
    return score_path.with_name(score_path.stem + IMAGE_COUNTS_SUFFIX)


def run_folder(model, runs=None):
    """runs/MODEL under `runs` (default paths.RUNS_DIR; make's '$(RUNS)' gives make paths)."""
    return RunFolder(Path(runs or paths.RUNS_DIR) / model, model)


def released_folder(model, runs=None):
    """runs/released/MODEL: where the reference release's weights of MODEL are scored."""
    return RunFolder(Path(runs or paths.RUNS_DIR) / RELEASED / model, model)


def base_weights(name, folder=None):
    """Base weights made by surgery: NAME.caffemodel under `folder` (default
    paths.WEIGHTS_DIR; make's '$(BASE_WEIGHTS)' gives the make path)."""
    return Path(folder or paths.WEIGHTS_DIR) / f'{name}.caffemodel'


# ---- what a model starts from -----------------------------------------------------------

MODEL, BASE, FILE = 'model', 'base', 'file'  # the kinds of InitSource


@dataclass(frozen=True)
class InitSource:
    """One net's weights a model starts from, as the table names them.

    kind MODEL: the run of model `name`: its final weights, or its snapshot of `iteration`
    where the table names one (late fusion); BASE: the base weights `name` made by surgery
    (base_weights(name)); FILE: the weights file `name`, relative to the repository."""
    kind: str
    name: str
    iteration: int | None = None
    modality: str = ''  # late fusion: the suffix of this net's layers ("color", "hha")


def init_sources(spec, table=None):
    """What model `spec` starts from, as InitSources in the table's order; () from scratch
    (the fillers of its prototxt). `table`: the models by name (default: the model table),
    which tells a model's name from base weights'."""
    if table is None:
        from models import registry
        table = registry.load().models
    if spec.init is None:
        return ()
    names = spec.init if isinstance(spec.init, tuple) else (spec.init,)
    iterations = spec.init_snapshots or (None,) * len(names)
    # Late fusion: the part of each net's name after their common prefix names its layers.
    prefix = len(os.path.commonprefix(list(names))) if len(names) > 1 else None
    sources = []
    for name, iteration in zip(names, iterations):
        if name.endswith('.caffemodel'):
            sources.append(InitSource(FILE, name))
        elif name not in table:
            sources.append(InitSource(BASE, name))
        else:
            sources.append(InitSource(MODEL, name, iteration,
                                      name[prefix:] if prefix is not None else ''))
    return tuple(sources)
