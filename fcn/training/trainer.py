"""A training run with Caffe's solver: the TrainingRun record, atomic snapshots and resuming,
stopping on a signal, the training and validation logs with their plots, and the Trainer
that steps the solver one iteration at a time.

solve.py is the command over this module; multigpu.py runs the same Trainer in one process
per GPU.
"""
import csv
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fcn import caffemodel, evaluation, nets, pictures, prototxt, surgery
from fcn.runs import STATE, WEIGHTS, RunFolder
from fcn.runtime import threads
from fcn.errors import FcnError, UsageError

@dataclass(frozen=True)
class TrainingRun:
    """One training run. Plain data, so that every GPU process gets a copy."""
    name: str                  # snapshot file prefix
    solver: Path               # solver.prototxt; its net paths are relative to its folder
    run_dir: Path              # snapshots, logs, plots, final weights
    heads: tuple               # Head(score, label, num_classes, ignore_absent)
    class_names: dict = field(default_factory=dict)  # label -> names, for the val log
    init: tuple = ()           # (weights file, modality) pairs; modality '' but for fusion
    widen_input: tuple = ()    # (source layer, layer) pairs: surgery.widen_input after init
    resume: Path = None        # a .solverstate; `init` is then not used
    steps: int = None          # iterations to run now (default: up to `iterations`)
    iterations: int = None     # where training ends (default: the solver's max_iter)
    test_every: int = None     # default: the solver's snapshot interval; 0: never
    snapshot_every: int = None  # default: the solver's snapshot interval, else test_every
    val_images: int = None     # score only the first N val images (quick looks)
    keep_snapshots: int = 0    # keep the newest N snapshots; 0 keeps all
    fresh_scores: bool = False  # score layers start from their fillers whatever `init` holds

    @property
    def folder(self):
        """The run folder's files (fcn/runs.py)."""
        return RunFolder(self.run_dir, self.name)


# ---- the solver ------------------------------------------------------------------------

def prepare_solver(training):
    """The solver definition Caffe is given: absolute net paths, snapshots into the
    scratch folder, and Caffe's own periodic snapshots off (they would not be atomic).
    Returns (path of the written solver.prototxt, the original SolverParameter)."""
    original = prototxt.read_solver(training.solver)
    param = type(original)()
    param.CopyFrom(original)
    base = Path(training.solver).resolve().parent

    def resolve(path):
        return str(base / path)

    for name in ('net', 'train_net'):
        if param.HasField(name):
            setattr(param, name, resolve(getattr(param, name)))
    param.test_net[:] = [resolve(path) for path in param.test_net]
    param.snapshot = 0
    param.snapshot_format = param.BINARYPROTO
    param.snapshot_prefix = str(RunFolder(Path(training.run_dir).resolve(),
                                          training.name).scratch_prefix)
    training.folder.scratch.mkdir(parents=True, exist_ok=True)
    path = training.folder.solver
    prototxt.write_text_proto(path, param)
    return path, original


def restore(solver, state_path):
    """Resume from a snapshot; the weights file is found next to the state file (the
    state names it by its bare file name, see Trainer.snapshot)."""
    state_path = Path(state_path)
    if not state_path.is_file():
        raise UsageError(f'--resume {state_path}: no such snapshot')
    try:
        _, learned_net = caffemodel.read_state(state_path)
    except caffemodel.CaffemodelError as e:
        raise UsageError(f'--resume {state_path}: {e}') from e
    weights = state_path.parent / Path(learned_net).name
    if not weights.is_file():
        raise UsageError(f'{state_path} needs its weights {weights}, which do not exist')
    caffemodel.checked_layers(weights)  # Caffe would end the process on a broken file
    # Caffe opens the state's weights file from the working directory: a copy of the state
    # names it by its absolute path.
    scratch = state_path.with_name(f'.{state_path.name}.resume{os.getpid()}')
    try:
        shutil.copyfile(state_path, scratch)
        caffemodel.set_learned_net(scratch, weights.resolve())
        solver.restore(str(scratch))
    finally:
        scratch.unlink(missing_ok=True)


# ---- stopping on a signal ------------------------------------------------------------

class StopRequest:
    """SIGINT or SIGTERM asks training to stop; the loop asks between iterations.

    With one process per GPU, every rank must stop after the same iteration or the
    others would wait for it forever in NCCL. The signal number then lives in shared
    memory, and `requested()` is a rendezvous: between two barriers rank 0 copies the
    shared flag into the decision all ranks read.
    """

    def __init__(self, signalled=None, decision=None, barrier=None, rank=0):
        self.signalled = signalled
        self.decision = decision
        self.barrier = barrier
        self.rank = rank
        self.local_signum = 0

    @classmethod
    def shared(cls, context, count):
        return cls(context.Value('i', 0), context.Value('i', 0), context.Barrier(count))

    def for_rank(self, rank):
        return StopRequest(self.signalled, self.decision, self.barrier, rank)

    @property
    def signum(self):
        return self.signalled.value if self.signalled is not None else self.local_signum

    def set(self, signum):
        if self.signalled is not None:
            with self.signalled.get_lock():
                self.signalled.value = self.signalled.value or signum
        else:
            self.local_signum = self.local_signum or signum

    def install(self):
        """Handle SIGINT and SIGTERM; a second Ctrl-C (SIGINT) to this process aborts at
        once. SIGTERM asks again and again for the same stop: a scheduler may signal every
        process of a job and its job script pass the signal on too, and its way to
        insist is SIGKILL."""
        interrupted = False

        def handler(signum, frame):
            nonlocal interrupted
            if signum == signal.SIGINT and interrupted:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            interrupted = interrupted or signum == signal.SIGINT
            if self.signum and signum == signal.SIGTERM:
                return
            self.set(signum)
            print(f'\n{signal.Signals(signum).name}: stopping after this iteration '
                  f'(a snapshot follows); Ctrl-C again to abort at once', file=sys.stderr,
                  flush=True)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, handler)

    def requested(self):
        if self.barrier is None:
            return self.signum != 0
        self.barrier.wait()
        if self.rank == 0:
            self.decision.value = self.signalled.value
        self.barrier.wait()
        return self.decision.value != 0


# ---- logs and plots --------------------------------------------------------------------

class TrainingLog:
    """train_log.csv (a row per iteration), val_log.json (a record per validation), and
    their plots. On resume, records after the resumed iteration are dropped: that
    training is redone."""

    def __init__(self, folder, start_iter, loss_names, title):
        self.folder = folder
        self.title = title
        self.csv_path = folder.train_log
        self.val_path = folder.val_log
        self.columns = ['iteration', 'seconds', 'loss'] + [f'loss_{n}' for n in loss_names]
        self.rows = [row for row in self._read_csv() if int(row['iteration']) <= start_iter]
        self.validations = [record for record in folder.validations()
                            if record['iteration'] <= start_iter] if start_iter else []
        self.seconds = float(self.rows[-1]['seconds']) if self.rows else 0.0
        self.clock = time.monotonic()

        def write(tmp):
            with open(tmp, 'w', newline='') as f:
                writer = csv.DictWriter(f, self.columns, extrasaction='ignore', restval='')
                writer.writeheader()
                writer.writerows(self.rows)
        pictures.atomic_save(self.csv_path, write)
        self.file = open(self.csv_path, 'a', newline='')
        self.writer = csv.DictWriter(self.file, self.columns)

    def _read_csv(self):
        if not self.csv_path.is_file():
            return []
        with open(self.csv_path, newline='') as f:
            return list(csv.DictReader(f))

    def loss(self, iteration, losses):
        seconds = self.seconds + time.monotonic() - self.clock
        row = {'iteration': iteration, 'seconds': f'{seconds:.2f}',
               'loss': f'{sum(losses.values()):.6g}'}
        row.update({f'loss_{name}': f'{value:.6g}' for name, value in losses.items()})
        self.writer.writerow(row)
        self.file.flush()
        self.rows.append(row)

    def validation(self, iteration, results):
        self.validations.append({'iteration': iteration, **results})
        pictures.atomic_save(self.val_path, lambda tmp: Path(tmp).write_text(
            json.dumps(self.validations, indent=1)))
        self.plot()

    def plot(self):
        if self.rows:
            x = np.array([int(row['iteration']) for row in self.rows])
            y = np.array([float(row['loss']) for row in self.rows])
            series = {'loss': (x, y)}
            window = max(1, len(y) // 50)
            if window > 1:
                smooth = np.convolve(y, np.ones(window) / window, mode='valid')
                series[f'mean of {window}'] = (x[window - 1:], smooth)
            pictures.save_curve_png(self.folder.loss_plot, series, 'training loss',
                               f'{self.title}: training loss')
        if self.validations:
            labels = [key for key in self.validations[0] if key != 'iteration']
            series = {label: ([r['iteration'] for r in self.validations],
                              [np.nan if r[label]['mean_iu'] is None else r[label]['mean_iu']
                               for r in self.validations]) for label in labels}
            pictures.save_curve_png(self.folder.mean_iu_plot, series, 'val mean IU',
                               f'{self.title}: validation')

    def close(self):
        self.file.close()


def net_loss_names(net):
    weights = net.blob_loss_weights
    return [name for name in net.outputs if weights[name]]


def net_losses(net):
    """The weighted loss outputs of a net after a forward pass, by blob name."""
    weights = net.blob_loss_weights
    return {name: float(weights[name]) * float(np.asarray(net.blobs[name].data).sum())
            for name in net_loss_names(net)}


class Diverged(ArithmeticError):
    """The loss is no longer a finite number."""


def guard_divergence(net):
    """Stop a training step whose forward pass gives a non-finite loss, before its
    backward pass runs.

    Once the weights diverge to NaN, every max-pooling window compares NaN and finds no
    maximum, and Caffe's CPU backward pass then adds the gradient at index -1, before the
    start of the bottom diff buffer: the heap is corrupted and the process later dies in
    free() ("double free or corruption"). A NaN anywhere before a pooling layer reaches the
    loss, so checking the loss after the net's last layer catches it in time.
    """
    last_layer = len(net.layers) - 1
    losses = [(name, net.blobs[name]) for name in net_loss_names(net)]

    def check(layer):
        if layer == last_layer:
            for name, blob in losses:
                value = float(np.asarray(blob.data).sum())
                if not np.isfinite(value):
                    raise Diverged(f'the loss output {name!r} is {value}')
    net.after_forward(check)


# ---- training --------------------------------------------------------------------------

class Trainer:
    """Steps a Caffe solver one iteration at a time, so that a signal is answered between
    iterations. Rank 0 (the only process unless several GPUs train) also validates, logs and
    snapshots; the other ranks only train."""

    def __init__(self, solver, training, rank, solver_param):
        """`solver_param`: the model's SolverParameter as written (before prepare_solver
        turned Caffe's own snapshots off): max_iter, display and the snapshot interval."""
        self.solver = solver
        self.training = training
        self.rank = rank
        interval = solver_param.snapshot
        self.end_iter = training.iterations or solver_param.max_iter
        self.display = solver_param.display or 20
        self.test_every = training.test_every if training.test_every is not None else interval
        self.snapshot_every = (training.snapshot_every if training.snapshot_every is not None
                               else interval or self.test_every)
        self.folder = training.folder
        self.log = None
        self.last_snapshot = None
        self.last_validation = None
        self.nccl = None  # kept alive: the solver holds only a raw pointer to it

    @property
    def is_root(self):
        return self.rank == 0

    def start(self):
        """Restore the snapshot, or (rank 0) initialise and fill the upsampling layers."""
        if self.training.resume is not None:
            restore(self.solver, self.training.resume)
            self.say(f'resumed from {self.training.resume} at iteration {self.solver.iter}')
        elif self.is_root:
            net = self.solver.net
            for weights, modality in self.training.init:
                try:
                    suffix = surgery.modality_suffix(net, modality) if modality else ''
                    report = surgery.load_weights(net, weights, suffix,
                                                  self.training.fresh_scores)
                except surgery.SurgeryError as e:
                    raise UsageError(str(e)) from e
                self.say(f'initialised from {weights}' + (f' (as *{suffix})' if suffix else ''))
                for line in report.lines():
                    self.say(f'  {line}')
            for source, layer in self.training.widen_input:
                weights, _ = self.training.init[0]
                try:
                    surgery.widen_input(net, layer, weights, source)
                except surgery.SurgeryError as e:
                    raise UsageError(str(e)) from e
                self.say(f'{layer}: {source} of {weights} on the first channels, their '
                         f'mean on the others')
            filled = surgery.interp(net)
            if filled:
                self.say(f'bilinear upsampling: {", ".join(filled)}')
        guard_divergence(self.solver.net)
        if self.is_root:
            self.log = TrainingLog(self.folder, self.solver.iter,
                                   net_loss_names(self.solver.net), self.training.name)
            self.last_snapshot = self.solver.iter if self.training.resume else None

    def say(self, message):
        if self.is_root:
            print(f'[{self.training.name}] {message}', flush=True)

    def target_iteration(self):
        if self.training.steps is not None:
            return self.solver.iter + self.training.steps
        return self.end_iter

    def run(self, stop):
        """Train to the target iteration; False if a signal stopped it first."""
        target = self.target_iteration()
        net = self.solver.net
        started, started_iter = time.monotonic(), self.solver.iter
        while self.solver.iter < target:
            self.fit_threads()
            try:
                self.solver.step(1)
            except Diverged as e:
                self.diverged(e)
            iteration = self.solver.iter
            if self.is_root:
                losses = net_losses(net)
                self.log.loss(iteration, losses)
                if iteration % self.display == 0:
                    rate = (iteration - started_iter) / (time.monotonic() - started)
                    self.say(f'iteration {iteration}/{target}  loss {sum(losses.values()):.4g}'
                             f'  ({rate:.2f} it/s)')
            if stop.requested():
                self.say(f'stopped by {signal.Signals(stop.signum).name} at iteration '
                         f'{iteration}')
                if self.is_root:
                    self.snapshot()
                    self.finish_logs()
                return False
            if self.is_root and self.test_every and iteration % self.test_every == 0:
                self.validate()
            if self.is_root and self.snapshot_every and iteration % self.snapshot_every == 0:
                self.snapshot()
        if self.is_root:
            if self.test_every and self.last_validation != self.solver.iter:
                self.validate()
            weights = self.snapshot()
            final = self.folder.final_weights
            pictures.atomic_save(final, lambda tmp: _link_or_copy(weights, tmp))
            self.say(f'final weights: {final}')
            self.finish_logs()
        return True

    def fit_threads(self):
        """Caffe's thread count, fitted to the cores other programs leave
        (fcn/runtime/threads.py); said when it changes, since it changes the speed."""
        share = threads.share()
        if share is None:
            return
        before = share.threads
        if share.adapt() != before:
            self.say(f'{share.threads} of {share.most} threads: other programs keep '
                     f'{share.others:.1f} cores busy')

    def diverged(self, error):
        """Stop without snapshotting the diverged weights, naming the last good snapshot."""
        if self.is_root:
            self.finish_logs()
        last = self.folder.latest_snapshot()
        raise FcnError(
            f'{self.training.name}: training diverged at iteration {self.solver.iter + 1}: '
            f'{error}. The learning rate is too high for this net and data (base_lr in '
            f'{self.training.solver}). '
            + (f'The last snapshot is {last}.' if last else 'No snapshot was taken.'))

    def finish_logs(self):
        self.log.plot()
        self.log.close()

    def validate(self):
        """Score the val net (the solver's test net, sharing the training weights)."""
        test_net = self.solver.test_nets[0]
        test_net.share_with(self.solver.net)
        ids = nets.split_ids(test_net)
        hists = evaluation.score_net(test_net, self.training.heads, ids,
                                     limit=self.training.val_images,
                                     label=f'[{self.training.name}] validation')
        names = {h.label: self.training.class_names.get(h.label) for h in self.training.heads}
        ignore = {h.label: h.ignore_absent for h in self.training.heads}
        results = evaluation.results(hists, names, ignore)
        self.log.validation(self.solver.iter, results)
        self.last_validation = self.solver.iter
        summary = '  '.join(f'{label} mean IU {m["mean_iu"]:.4f} pixel acc {m["pixel_acc"]:.4f}'
                            for label, m in results.items() if m['mean_iu'] is not None)
        self.say(f'validation at {self.solver.iter}: {summary}')
        return results

    def snapshot(self):
        """Snapshot atomically; returns the weights file. Idempotent per iteration."""
        iteration = self.solver.iter
        weights, state = self.folder.snapshot(iteration), self.folder.snapshot(iteration, STATE)
        if self.last_snapshot == iteration and weights.is_file() and state.is_file():
            return weights
        scratch = self.folder.scratch
        self.solver.snapshot()
        scratch_weights, scratch_state = scratch / weights.name, scratch / state.name
        try:
            layers = len(caffemodel.read_layers(scratch_weights))
            state_iteration, _ = caffemodel.read_state(scratch_state)
        except (OSError, caffemodel.CaffemodelError) as e:
            raise RuntimeError(f'the snapshot at iteration {iteration} in {scratch} is '
                               f'unreadable ({e}); is the disk full?') from e
        if not layers or state_iteration != iteration:
            raise RuntimeError(f'the snapshot at iteration {iteration} in {scratch} is '
                               f'incomplete; is the disk full?')
        # The state names its weights by bare file name: found next to it on resume.
        caffemodel.set_learned_net(scratch_state, weights.name)
        self.folder.snapshots.mkdir(parents=True, exist_ok=True)
        os.replace(scratch_weights, weights)
        os.replace(scratch_state, state)
        self.last_snapshot = iteration
        self.say(f'snapshot {state}')
        self.prune_snapshots()
        return weights

    def prune_snapshots(self):
        if not self.training.keep_snapshots:
            return
        for state in self.folder.snapshot_states()[:-self.training.keep_snapshots]:
            state.with_suffix(f'.{WEIGHTS}').unlink(missing_ok=True)
            state.unlink()


def _link_or_copy(source, destination):
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def build_solver(training):
    import caffe
    path, original = prepare_solver(training)
    solver = caffe.get_solver(str(path))
    return solver, original


def train(training, stop=None):
    """Train a run in this process (Caffe's mode already set). True when finished,
    False when a signal stopped it (a snapshot was taken)."""
    solver, original = build_solver(training)
    trainer = Trainer(solver, training, 0, original)
    trainer.start()
    if stop is None:
        stop = StopRequest()
        stop.install()
    return trainer.run(stop)
