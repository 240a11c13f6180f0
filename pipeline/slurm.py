#!/usr/bin/env python3
"""Run the pipeline on a SLURM cluster: what `make MODEL` would make becomes SLURM jobs.

  python3 -m pipeline.slurm submit MODEL... [--all] [options] [VARIABLE=VALUE...]
  python3 -m pipeline.slurm status [RUNS]

`submit` asks make which files it would make for the models (`make -n -p`, with the
make variables given, e.g. STEPS=20 VAL_IMAGES=5), so the chain is the Makefile's and
nothing is described twice. Every file a pipeline tool makes is one job: surgery, each
stage's training (GPUS_PER_JOB GPUs), the scoring (with SHARDS=N, an array job of N
shards and a job merging them). A job runs `make THAT-FILE` with the same variables, so
it runs the very command `make MODEL` runs; it starts when the jobs making its inputs
have succeeded (--dependency=afterok). What is done is not submitted; a target whose
earlier job is still queued or running is not submitted twice, later jobs wait for it.
Whatever else make would make first (the virtualenv, a dataset, a missing classifier's
download instructions) is made here, before anything is submitted.

Each job runs pipeline/slurm-job.sh: SIGTERM (sbatch --signal=B:TERM@STOP_BEFORE ahead of
the time limit, a preemption, `scancel --batch --signal=TERM JOB`) reaches solve.py,
which snapshots and exits; the job then requeues itself and, run again, resumes from the
snapshot (`solve.py --resume auto`). Logs go to RUNS/MODEL/slurm/, and each submission
is recorded in RUNS/GOAL/slurm/chain.json, which `status` reads.

Only the standard library: this runs with the system python3, on a login node.
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import make_rules
from models import registry

from fcn import runs
from fcn.paths import REPO
JOB_SCRIPT = 'pipeline/slurm-job.sh'
# make's own bookkeeping, which would tell a make run by this one to act as its child.
MAKE_ENVIRONMENT = ('MAKEFLAGS', 'MFLAGS', 'MAKELEVEL', 'MAKEOVERRIDES')
# A job in one of these states will still run: its target is not submitted again.
LIVE_STATES = {'PENDING', 'CONFIGURING', 'RUNNING', 'COMPLETING', 'REQUEUED',
               'REQUEUE_HOLD', 'REQUEUE_FED', 'RESIZING', 'SUSPENDED', 'STAGE_OUT',
               'SIGNALING'}


class ClusterError(Exception):
    """A problem the user can fix; the message says how."""


# ---- what make would make ------------------------------------------------------------

@dataclass
class Target:
    name: str
    prerequisites: tuple = ()
    remade: bool = False   # make -n would make it
    phony: bool = False


@dataclass
class Database:
    """The parts of `make -n -p`'s data base that the planning needs."""
    targets: dict
    variables: dict


def parse_database(text):
    """Read the output of `make -n -p --debug=b`: the variables' values as written
    (simple variables and the command line's are final), per file its prerequisites
    (normal and order-only), and whether make found it out of date ("Must remake")."""
    remade = set(re.findall(r"^\s*Must remake target '(.+)'\.$", text, re.MULTILINE))
    variables = {}
    for line in text.split('\n# Files\n')[0].splitlines():
        match = re.match(r'^([A-Za-z_][A-Za-z0-9_]*) :?= (.*)$', line)
        if match:
            variables[match.group(1)] = match.group(2)
    files = text.split('\n# Files\n', 1)[1].split('\n# files hash-table stats', 1)[0]
    targets = {}
    for block in files.split('\n\n'):
        lines = [line for line in block.splitlines() if line and not line.startswith('\t')]
        rule = [line for line in lines if not line.startswith('#')]
        match = re.match(r'^(\S+?)::?(?: (.*))?$', rule[0]) if rule else None
        if not match:
            continue
        notes = '\n'.join(lines)
        targets[match.group(1)] = Target(
            name=match.group(1),
            prerequisites=tuple(word for word in (match.group(2) or '').split() if word != '|'),
            remade=match.group(1) in remade,
            phony='#  Phony target' in notes)
    return Database(targets, variables)


def make_command(launcher, *args):
    return [*launcher, 'make', '--no-print-directory', *args]


def make_environment():
    return {key: value for key, value in os.environ.items() if key not in MAKE_ENVIRONMENT}


def run_make(launcher, args, capture=True):
    try:
        result = subprocess.run(make_command(launcher, *args), cwd=REPO,
                                env=make_environment(), capture_output=capture, text=True)
    except FileNotFoundError as error:
        raise ClusterError(f'cannot run make: {error.filename} not found'
                           + (' (CLUSTER_EXEC)' if launcher else '')) from error
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or '').strip()[-2000:] if capture else ''
        raise ClusterError(f'`{shlex.join(make_command(launcher, *args))}` failed'
                           + (f':\n{detail}' if detail else ''))
    return result.stdout


def read_plan(goals, variables, launcher=()):
    """make's data base after a dry run of the goals."""
    return parse_database(run_make(launcher, ['-n', '-p', '--debug=b', *goals, *variables]))


# ---- jobs ----------------------------------------------------------------------------

@dataclass
class Job:
    kind: str              # train, score, shard, merge, surgery
    targets: list          # one file; the shards of an array job
    folder: str            # RUNS/MODEL: where its log and records go
    after: list = field(default_factory=list)  # the jobs making its inputs
    job_id: str = None     # SLURM's id, once submitted or found queued

    @property
    def label(self):
        what = Path(self.targets[0]).stem if self.kind == 'surgery' else Path(self.folder).name
        return f'{what}:{self.kind}'


def product_kind(name, db):
    """The job kind of a file a pipeline tool makes, or None for anything else."""
    path = Path(name)
    if path.parent == Path(db.variables['BASE_WEIGHTS']) and path.suffix == '.caffemodel' \
            and path.stem in make_rules.surgery_outputs():
        return 'surgery'
    folder = model_folder(name, db)
    if folder is None:
        return None
    rest = path.relative_to(folder).parts
    if rest == (runs.FINAL_WEIGHTS,):
        return 'train'
    if rest == (runs.SCORE,):
        shards = [p for p in db.targets[name].prerequisites if product_kind(p, db) == 'shard']
        return 'merge' if shards else 'score'
    if len(rest) == 2 and rest[0] == runs.SCORE_SHARDS and rest[1].endswith('.npz'):
        return 'shard'
    return None


def model_folder(name, db):
    """RUNS/MODEL for a file of a model's run folder, else None."""
    runs_dir = Path(db.variables['RUNS'])
    path = Path(name)
    if path.is_relative_to(runs_dir) and \
            path.relative_to(runs_dir).parts[0] in registry.load().models:
        return str(runs_dir / path.relative_to(runs_dir).parts[0])
    return None


def walk(goals, db):
    """The targets make would make for the goals, inputs before what needs them."""
    order, seen = [], set()

    def visit(name):
        if name in seen or name not in db.targets:
            return
        seen.add(name)
        target = db.targets[name]
        if not target.remade:
            return
        for prerequisite in target.prerequisites:
            visit(prerequisite)
        order.append(name)

    for goal in goals:
        visit(goal)
    return order


def plan_jobs(goals, db):
    """(jobs in submission order, files to make here first). A job's `after` are the
    jobs of the products it needs, found through anything that is not itself a job."""
    order = walk(goals, db)
    kinds = {name: product_kind(name, db) for name in order}
    inputs = [name for name in order if kinds[name] is None and not db.targets[name].phony]
    jobs, job_of = [], {}
    for name in order:
        kind = kinds[name]
        if kind is None:
            continue
        folder = model_folder(name, db)
        if kind == 'shard':
            array = next((job for job in jobs if job.kind == 'shard' and job.folder == folder),
                         None)
            if array:
                array.targets.append(name)
                job_of[name] = array
                continue
        job = Job(kind, [name], folder)
        jobs.append(job)
        job_of[name] = job
    for job in jobs:
        for name in job.targets:
            for needed in products_needed(name, db, job_of):
                if needed is not job and needed not in job.after:
                    job.after.append(needed)
    for job in jobs:
        if job.folder is None:  # surgery: logged with the first stage that starts from it
            job.folder = next((user.folder for user in jobs if job in user.after),
                              db.variables['RUNS'])
    return jobs, inputs


def products_needed(name, db, job_of, seen=None):
    seen = set() if seen is None else seen
    found = []
    for prerequisite in db.targets[name].prerequisites:
        if prerequisite in seen or prerequisite not in db.targets:
            continue
        seen.add(prerequisite)
        if prerequisite in job_of:
            found.append(job_of[prerequisite])
        elif db.targets[prerequisite].remade:
            found.extend(products_needed(prerequisite, db, job_of, seen))
    return found


# ---- submission ----------------------------------------------------------------------

@dataclass
class Settings:
    gpus_per_job: int = 1
    cpus_per_job: int = 4
    partition: str = ''
    account: str = ''
    time_limit: str = ''
    stop_before: int = 600
    sbatch_flags: tuple = ()
    launcher: tuple = ()


def device_variables(job, settings):
    """The make variables that put a job on the GPUs SLURM gave it (numbered from 0
    within the job); none for the CPU."""
    gpus = job_gpus(job, settings)
    if gpus == 0:
        return []
    return ['GPU=0'] if gpus == 1 else ['GPUS=' + ','.join(map(str, range(gpus)))]


def job_gpus(job, settings):
    if job.kind == 'train':
        return settings.gpus_per_job
    if job.kind in ('score', 'shard'):
        return min(1, settings.gpus_per_job)
    return 0  # surgery and merging run on the CPU


def log_pattern(job):
    """The job's log, in sbatch's patterns: %j the job, %A_%a an array's task."""
    if job.kind == 'shard':
        name = 'shard-%A_%a.log'
    elif job.kind == 'surgery':
        name = f'surgery-{Path(job.targets[0]).stem}-%j.log'
    else:
        name = f'{job.kind}-%j.log'
    return str(runs.RunFolder(job.folder).slurm / name)


def sbatch_command(job, settings, variables):
    gpus = job_gpus(job, settings)
    command = ['sbatch', '--parsable', '--job-name', f'fcn:{job.label}', '--chdir', str(REPO),
               '--output', log_pattern(job),
               '--open-mode', 'append', '--requeue', '--kill-on-invalid-dep', 'yes',
               '--signal', f'B:TERM@{settings.stop_before}',
               '--cpus-per-task', str(settings.cpus_per_job)]
    if job.after:
        command += ['--dependency', 'afterok:' + ':'.join(
            after.job_id or f'<{after.label}>' for after in job.after)]
    for flag, value in (('--partition', settings.partition), ('--account', settings.account),
                        ('--time', settings.time_limit)):
        if value:
            command += [flag, value]
    if gpus:
        command += ['--gres', f'gpu:{gpus}']
    if job.kind == 'shard':
        command += ['--array', f'0-{len(job.targets) - 1}']
    command += list(settings.sbatch_flags)
    command += [JOB_SCRIPT]
    if settings.launcher:
        command += ['--exec', shlex.join(settings.launcher)]
    return command + job.targets + ['--'] + variables + device_variables(job, settings)


def recorded_jobs(runs_dir):
    """{target: job id} from every chain record under `runs_dir`, newest last."""
    records = sorted(Path(REPO, runs_dir).glob(f'**/{runs.SLURM_DIR}/{runs.CHAIN_RECORD}'),
                     key=lambda path: path.stat().st_mtime)
    jobs = {}
    for record in records:
        for job in json.loads(record.read_text())['jobs']:
            for target in job['targets']:
                jobs[target] = job['job']
    return jobs


def job_states(job_ids):
    """{job id: [state of each task]} for the jobs SLURM still knows (squeue), then for
    older ones its accounting (sacct) where the cluster keeps it."""
    states = {}
    if not job_ids:
        return states
    # %i is JOB, or JOB_TASK for an array's task (JOB_[0-2] for those still pending).
    result = subprocess.run(['squeue', '--me', '--noheader', '--states', 'all',
                             '--format', '%i|%T|%r'], capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f'squeue failed: {result.stderr.strip()}')
    for line in result.stdout.splitlines():
        task, state, reason = line.strip().split('|')
        job = task.split('_')[0]
        if job in job_ids:
            states.setdefault(job, []).append(state if reason in ('None', '') else
                                              f'{state} ({reason})')
    missing = [job for job in job_ids if job not in states]
    if missing:
        result = subprocess.run(['sacct', '--noheader', '--parsable2', '--allocations',
                                 '--format', 'JobID,State', '--jobs', ','.join(missing)],
                                capture_output=True, text=True)
        for line in result.stdout.splitlines() if result.returncode == 0 else ():
            job, state = line.split('|')
            base = job.split('_')[0]
            if base in missing:
                states.setdefault(base, []).append(state.split()[0])
    return states


def is_live(states):
    return bool(states) and any(state.split()[0] in LIVE_STATES for state in states)


def sbatch(command):
    result = subprocess.run(command, cwd=REPO, env=make_environment(), capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise ClusterError(f'sbatch failed: {result.stderr.strip()}\n  {shlex.join(command)}')
    return result.stdout.strip().split(';')[0]


def submit(goals, variables, settings, dry_run=False, out=sys.stdout):
    """Submit what make would make for `goals`; returns the jobs (ids set unless dry)."""
    db = read_plan(goals, variables, settings.launcher)
    jobs, inputs = plan_jobs(goals, db)
    if inputs:
        print(f'made here first: {" ".join(inputs)}', file=out)
        if dry_run:
            print('  (dry run: not made)', file=out)
        else:
            run_make(settings.launcher, [*inputs, *variables], capture=False)
            db = read_plan(goals, variables, settings.launcher)
            jobs, inputs = plan_jobs(goals, db)
            if inputs:
                raise ClusterError(f'make still wants to make {" ".join(inputs)} first')
    if not jobs:
        print(f'nothing to submit: {" ".join(goals)} up to date', file=out)
        return jobs
    recorded = {} if dry_run else recorded_jobs(db.variables['RUNS'])
    states = {} if dry_run else job_states({recorded[t] for job in jobs for t in job.targets
                                            if t in recorded})
    for job in jobs:
        earlier = {recorded.get(target) for target in job.targets}
        if len(earlier) == 1 and is_live(states.get(earlier.pop())):
            job.job_id = recorded[job.targets[0]]
            print(f'{job.job_id:>8}  {job.label}: still queued from before', file=out)
            continue
        command = sbatch_command(job, settings, variables)
        if dry_run:
            print(shlex.join(command), file=out)
            continue
        runs.RunFolder(REPO / job.folder).slurm.mkdir(parents=True, exist_ok=True)
        job.job_id = sbatch(command)
        after = ' after ' + ','.join(a.job_id for a in job.after) if job.after else ''
        print(f'{job.job_id:>8}  {job.label}{after}: {" ".join(job.targets)}', file=out)
    if not dry_run:
        record_chains(goals, db, jobs, variables)
    return jobs


def record_chains(goals, db, jobs, variables):
    """RUNS/GOAL/slurm/chain.json for each goal: its jobs, for `status`."""
    for goal in goals:
        needed = set(walk([goal], db))
        chain = [job for job in jobs if needed.intersection(job.targets)]
        if not chain:
            continue
        record = {'goal': goal, 'submitted': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
                  'variables': variables,
                  'jobs': [{'job': job.job_id, 'kind': job.kind, 'targets': job.targets,
                            'after': [a.job_id for a in job.after],
                            'log': log_pattern(job).replace('%j', job.job_id)
                            .replace('%A', job.job_id).replace('%a', '*')}
                           for job in chain]}
        path = runs.run_folder(goal, REPO / db.variables['RUNS']).chain_record
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f'.{path.name}.{os.getpid()}')
        scratch.write_text(json.dumps(record, indent=1))
        scratch.replace(path)


# ---- status --------------------------------------------------------------------------

def status(runs_dir, out=sys.stdout):
    """Every recorded chain under `runs_dir`: each job, its state, its target, its log."""
    records = sorted(Path(REPO, runs_dir).glob(f'**/{runs.SLURM_DIR}/{runs.CHAIN_RECORD}'))
    if not records:
        print(f'no chains submitted under {runs_dir} (make cluster-MODEL submits one)',
              file=out)
        return
    chains = [json.loads(record.read_text()) for record in records]
    states = job_states({job['job'] for chain in chains for job in chain['jobs']})
    for chain in chains:
        print(f'{chain["goal"]}  (submitted {chain["submitted"]}'
              f'{" " + " ".join(chain["variables"]) if chain["variables"] else ""})', file=out)
        for job in chain['jobs']:
            state = summarise(states.get(job['job']))
            if state == 'unknown':
                done = all(Path(REPO, target).exists() for target in job['targets'])
                state = 'gone: ' + ('target made' if done else 'target missing')
            print(f'  {job["job"]:>8}  {job["kind"]:8} {state:28} {job["targets"][0]}'
                  f'{" (+%d)" % (len(job["targets"]) - 1) if len(job["targets"]) > 1 else ""}',
                  file=out)
            print(f'  {"":8}  log {job["log"]}', file=out)


def summarise(states):
    """One job's state; an array job's as its tasks' states and counts."""
    if not states:
        return 'unknown'
    if len(set(states)) == 1:
        return states[0] + (f' ({len(states)} tasks)' if len(states) > 1 else '')
    counts = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    return ', '.join(f'{count} {state}' for state, count in sorted(counts.items()))


# ---- command line --------------------------------------------------------------------

def models_with_data(launcher, variables):
    """The models whose dataset is prepared: their data stamp exists where make (through
    the launcher, e.g. in the container) sees the data root."""
    root = read_plan(['help'], variables, launcher).variables['DATA_ROOT']
    stamps = {name: make_rules.data_stamp(spec).replace('$(DATA_ROOT)', root)
              for name, spec in registry.load().models.items()}
    check = [*launcher, 'sh', '-c', 'for f; do [ -e "$f" ] && echo "$f"; done', 'sh',
             *sorted(set(stamps.values()))]
    result = subprocess.run(check, capture_output=True, text=True, env=make_environment())
    present = set(result.stdout.splitlines())
    return [name for name, stamp in stamps.items() if stamp in present]


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    sub = commands.add_parser('submit', help="submit models' chains as SLURM jobs")
    sub.add_argument('words', nargs='*', metavar='MODEL|VARIABLE=VALUE',
                     help='models to make, and make variables for make and every job '
                     '(STEPS=N, VAL_IMAGES=N, SHARDS=N, RUNS=DIR, ...)')
    sub.add_argument('--all', action='store_true',
                     help='every model of the table whose dataset is prepared')
    sub.add_argument('--gpus-per-job', type=int, default=1, metavar='N',
                     help='GPUs of a training job (0: the CPU); scoring takes one')
    sub.add_argument('--cpus-per-job', type=int, default=4, metavar='N')
    sub.add_argument('--partition', default='')
    sub.add_argument('--account', default='')
    sub.add_argument('--time-limit', default='', metavar='TIME',
                     help="each job's time limit (sbatch --time)")
    sub.add_argument('--stop-before', type=int, default=600, metavar='SECS',
                     help='ask a job to snapshot and requeue this long before its limit')
    sub.add_argument('--sbatch-flags', default='', metavar='FLAGS',
                     help='more sbatch options for every job, e.g. "--qos=long --mem=32G"')
    sub.add_argument('--exec', default='', metavar='COMMAND',
                     help='run make through this, e.g. a container runtime: '
                     '"apptainer exec --nv ... fcn.sif"')
    sub.add_argument('--dry-run', action='store_true',
                     help='print the sbatch commands; make and submit nothing')
    sub.add_argument('--settings', default='', metavar='NAMES',
                     help="variables among the words that set these options (make's "
                     "command line), not passed to make")
    sub = commands.add_parser('status', help='the submitted chains and their jobs')
    sub.add_argument('runs', nargs='?', default='runs', help='runs folder (default: runs)')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.command == 'status':
            status(args.runs)
            return 0
        goals = [word for word in args.words if '=' not in word]
        # The devices are each job's own (GPUS_PER_JOB).
        kept_out = set(args.settings.split()) | {'GPU', 'GPUS'}
        variables = [word for word in args.words
                     if '=' in word and word.split('=')[0] not in kept_out]
        table = registry.load()
        for goal in goals:
            try:
                table.spec(goal)
            except registry.UnknownModel as error:
                raise ClusterError(str(error)) from None
        settings = Settings(args.gpus_per_job, args.cpus_per_job, args.partition, args.account,
                            args.time_limit, args.stop_before,
                            tuple(shlex.split(args.sbatch_flags)), tuple(shlex.split(args.exec)))
        if args.all:
            goals += [name for name in models_with_data(settings.launcher, variables)
                      if name not in goals]
        if not goals:
            raise ClusterError('name a model, or --all for every model whose data is prepared')
        submit(goals, variables, settings, args.dry_run)
        return 0
    except ClusterError as error:
        print(f'cluster: {error}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
