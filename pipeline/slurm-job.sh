#!/usr/bin/env bash
# One target of the pipeline as a SLURM job, submitted by pipeline/slurm.py:
#
#   sbatch [...] pipeline/slurm-job.sh [--exec COMMAND] TARGET... -- [VARIABLE=VALUE...]
#
# The job runs `make TARGET VARIABLE=VALUE...` in the project folder, the same make as on
# one machine: it runs the same command, leaves a finished target alone and resumes a
# stopped stage from its snapshot (solve.py --resume auto). An array job gets its shards'
# targets and makes the one of its task. --exec runs make through COMMAND (a container
# runtime: apptainer exec ..., enroot start ...).
#
# SIGTERM to this script (sbatch --signal=B:TERM@SECS before the time limit, a
# preemption, `scancel --batch --signal=TERM JOB`) is passed to every process of the make
# (solve.py snapshots and exits; it may get the signal more than once, as SLURM can also
# signal every process itself). Once they have all ended, the job requeues itself unless
# the target was made after all or the job is being cancelled (plain scancel also sends
# SIGTERM first); run again, it resumes.
set -uo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
launcher=()
if [[ ${1:-} == --exec ]]; then
    eval "launcher=($2)"  # shell words, quoted by cluster.py
    shift 2
fi
targets=()
while (($#)) && [[ $1 != -- ]]; do
    targets+=("$1")
    shift
done
shift || { echo "usage: $0 [--exec COMMAND] TARGET... -- [VARIABLE=VALUE...]" >&2; exit 2; }
target=${targets[${SLURM_ARRAY_TASK_ID:-0}]}

echo "$(date '+%F %T') job ${SLURM_JOB_ID:-?} on $(hostname) (restart ${SLURM_RESTART_COUNT:-0}):" \
    "make $target $*"
stopped=
# make and what it runs form their own process group, so that they can be signalled and
# waited for together, whoever signals first.
trap 'stopped=1; kill -TERM -- "-$group" 2>/dev/null' TERM
setsid "${launcher[@]}" make --no-print-directory "$target" "$@" &
group=$!
wait "$group"
status=$?
while kill -0 "$group" 2>/dev/null; do  # interrupted by the trap: make is still running
    wait "$group"
    status=$?
done
while kill -0 -- "-$group" 2>/dev/null; do  # a stage still snapshotting after make ended
    sleep 1
done
# A cancelled job (plain scancel) is no longer RUNNING: it is not requeued.
if [[ -n $stopped && $status -ne 0 ]] &&
        scontrol show job --oneliner "$SLURM_JOB_ID" | grep -q 'JobState=RUNNING '; then
    echo "$(date '+%F %T') stopped by SIGTERM (make exited $status): requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
echo "$(date '+%F %T') make exited $status"
exit "$status"
