"""Training on several GPUs of one machine: one process per GPU, each a rank of Caffe's
NCCL group. The data layers shard the training set by rank; rank 0 alone initialises,
scores, logs and snapshots; a signal stops every rank after the same iteration.
"""
import multiprocessing
import multiprocessing.connection
import sys

from fcn.errors import FcnError, exit_with
from fcn.training.trainer import StopRequest, Trainer, build_solver


def configure_rank(caffe, gpu, rank, count):
    """Make this process solver `rank` of `count` on its GPU. Must precede the solver:
    the data layers read the rank and count when the nets are set up, to shard."""
    caffe.set_device(gpu)
    caffe.set_mode_gpu()
    caffe.set_solver_count(count)
    caffe.set_solver_rank(rank)
    caffe.set_multiprocess(True)


def attach_nccl(caffe, solver, uid):
    """Join the NCCL group: weights broadcast from rank 0, gradients all-reduced."""
    nccl = caffe.NCCL(solver, uid)
    nccl.bcast()
    solver.add_callback(nccl)
    if solver.param.layer_wise_reduce:
        solver.net.after_backward(nccl)
    return nccl


def run_rank(training, gpus, rank, uid, stop):
    """One GPU's process: configure, build, initialise (rank 0), join NCCL, train. An
    FcnError ends the process in one line, as it ends a command."""
    import caffe
    try:
        configure_rank(caffe, gpus[rank], rank, len(gpus))
        solver, original = build_solver(training)
        trainer = Trainer(solver, training, rank, original)
        trainer.start()
        trainer.nccl = attach_nccl(caffe, solver, uid)
        stop.install()
        finished = trainer.run(stop)
    except FcnError as error:
        exit_with(error)
    sys.exit(0 if finished else 128 + stop.signum)


def launch(training, gpus, target=run_rank, new_uid=None):
    """Start one process per GPU and wait for them; returns the exit status.

    If one process dies, the others would wait for it in NCCL forever, so they are
    terminated. Signals to this process reach the ranks through the shared stop flag.
    """
    if new_uid is None:
        import caffe
        new_uid = caffe.NCCL.new_uid
    uid = new_uid()
    context = multiprocessing.get_context('spawn')
    stop = StopRequest.shared(context, len(gpus))
    processes = [context.Process(target=target, name=f'rank {rank} (GPU {gpu})',
                                 args=(training, gpus, rank, uid, stop.for_rank(rank)))
                 for rank, gpu in enumerate(gpus)]
    stop.install()
    for process in processes:
        process.start()
    running = {process.sentinel: process for process in processes}
    status = 0
    while running:
        for sentinel in multiprocessing.connection.wait(list(running)):
            process = running.pop(sentinel)
            process.join()
            if process.exitcode != 0 and status == 0:
                status = process.exitcode if process.exitcode > 0 else 128 - process.exitcode
                if not stop.signum:
                    print(f'{process.name} failed (exit {process.exitcode}); stopping the '
                          f'other ranks', file=sys.stderr, flush=True)
                    for other in running.values():
                        other.terminate()
    return status
