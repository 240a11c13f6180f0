"""Training beside other work: Caffe alone, then next to one busy single-threaded process.

An OpenMP thread that finishes its share of a parallel region waits for the others by
spinning (libgomp: 300,000 spins, a few milliseconds, unless told otherwise). On a machine
whose cores all have work, the spinning thread holds a core that the thread it waits for,
or the other program, needed: the toy nets, whose every layer is a short parallel region,
trained 5-7x slower next to one busy process. The project's tools fit Caffe's thread count
to the cores other programs leave free while they run (`fcn/runtime/threads.py`).

Two Caffe training workers take turns, one with the project's setting and one with the
libraries' defaults (fitting off, no wait settings). Each run steps the solver one
iteration at a time as the trainer does, starting at the libraries' thread count as a new
training would. Every round times both alone, then starts a busy process (a Python loop:
one core's worth of work), times both beside it and stops it. Figures are medians over
rounds of each round's ratio, so load from elsewhere that changes between rounds cancels.
"""

import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

from bench import report

# Pure computation, one thread; it stops by itself when the benchmark's process is gone
# (checking its parent between stretches of counting), even if that was killed.
BUSY_LOOP = ('import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n'
             '    for _ in range(100000): pass')
# The busy process is started this long before a timed run, so that it is spinning by then.
BUSY_START_SECONDS = 0.3


@contextmanager
def busy_process():
    """One single-threaded process using a whole core for as long as the block runs."""
    process = subprocess.Popen([sys.executable, '-c', BUSY_LOOP])
    try:
        time.sleep(BUSY_START_SECONDS)
        if process.poll() is not None:
            raise SystemExit(f'bench: the busy process exited early ({process.returncode})')
        yield process
    finally:
        process.kill()
        process.wait()


def alternate_with_busy(workers, rounds, loads, say):
    """Seconds of each worker's runs alone and beside a busy process, `rounds` of each, and
    how many iterations of each run ran on fewer threads than the libraries' own.

    `workers` maps a label to a Worker. The order of the workers flips every round, so
    that neither always runs first after the busy process starts.
    """
    for worker in workers.values():
        worker.run()
    samples = {label: {'alone': [], 'busy': [], 'alone_fewer': [], 'busy_fewer': []}
               for label in workers}

    def timed(label, condition):
        samples[label][condition].append(workers[label].run())
        samples[label][f'{condition}_fewer'].append(
            workers[label].request('fewer_threads')['result'])

    for index in range(rounds):
        order = list(workers) if index % 2 == 0 else list(reversed(workers))
        for label in order:
            timed(label, 'alone')
        with busy_process():
            for label in order:
                timed(label, 'busy')
        loads.append(os.getloadavg()[0])
        say(f'contention round {index + 1}/{rounds}: ' + ', '.join(
            f'{label} {times["alone"][-1]:.2f} s alone, {times["busy"][-1]:.2f} s busy'
            for label, times in samples.items()))
    return samples


def summarize(samples, reference):
    """Medians, and the ratios that the goals are stated in, of `alternate_with_busy`'s
    samples; `reference` is the label the others are compared with (the defaults)."""
    figures = {}
    for label, times in samples.items():
        figures[label] = {
            'alone_s': round(statistics.median(times['alone']), 4),
            'busy_s': round(statistics.median(times['busy']), 4),
            'alone_samples_s': [round(s, 4) for s in times['alone']],
            'busy_samples_s': [round(s, 4) for s in times['busy']],
            # busy / alone: 1.0 is no loss; a fair share of 2 cores between 2 threads of
            # training and 1 busy thread would be about 1.5.
            'slowdown': report.ratio(times['busy'], times['alone']),
            # Iterations, summed over the rounds, that ran on fewer threads.
            'fewer_threads_alone': sum(times['alone_fewer']),
            'fewer_threads_busy': sum(times['busy_fewer']),
        }
        if label != reference:
            base = samples[reference]
            figures[label]['alone_vs_reference'] = report.ratio(times['alone'], base['alone'])
            figures[label]['busy_vs_reference'] = report.ratio(times['busy'], base['busy'])
    return figures
