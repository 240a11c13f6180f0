"""Caffe's CPU threads, fitted to the cores that other programs leave free.

Every Caffe layer on the CPU is one or more OpenMP parallel regions (the patched
im2col/col2im loops, and the BLAS in the same libgomp pool: the OpenMP OpenBLAS, or MKL
with its GNU threading layer, caffe_env.py), split evenly
between the threads. Between regions, libgomp's threads spin for about 8 ms before they
sleep. Alone, that spinning is what makes the many short regions of a small net cheap:
telling the threads to sleep sooner (GOMP_SPINCOUNT=1000) cost the toy FCN 8-20% alone.
Beside one other busy process on a 2-core machine, though, the spinning thread holds a
core the other thread or the other program needs, and every region waits for whichever
thread was descheduled: training ran 5-7x slower than alone. One thread beside that
process ran 1.2-1.7x slower than two threads alone (BENCHMARKS.md).

So the training and scoring loops call `adapt()` once per iteration or image. Every half
second it measures how many cores other programs kept busy (the CPU time /proc/stat counts
for the cores this process may use, less this process's own) and sets the thread count to
the cores left over, at least one and at most the count Caffe would use by itself
(OMP_NUM_THREADS, else the usable cores). Alone, nothing changes: the libraries' own
behaviour runs as it did. FCN_ADAPT_THREADS=0 turns it off.

Where there is one usable core (or OMP_NUM_THREADS=1) there is nothing to fit, and a
process that sets its thread count itself should turn this off. So should a container
held to a CPU quota rather than a set of CPUs: there the usable cores are all the host's,
and so is the busy time /proc/stat counts.
"""
import ctypes
import os
import resource
import time

WINDOW_SECONDS = 0.5
# A window much longer than WINDOW_SECONDS means the loop was not running (a validation
# pass, a pause): its average says little about now, so it only starts a new window.
STALE_SECONDS = 4 * WINDOW_SECONDS
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')


def busy_ticks(cpus, stat_path='/proc/stat'):
    """Clock ticks the given CPUs spent running anything (user, nice, system, irq and
    softirq time; guest time is inside user), from /proc/stat's per-CPU lines."""
    total = 0
    with open(stat_path) as stat:
        for line in stat:
            if not (line.startswith('cpu') and line[3].isdigit()):
                continue
            name, *values = line.split()
            if int(name[3:]) in cpus:
                user, nice, system, _idle, _iowait, irq, softirq = map(int, values[:7])
                total += user + nice + system + irq + softirq
    return total


def own_cpu_seconds():
    """CPU time of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def threads_for(others, most):
    """Threads to run when other programs keep `others` cores busy (rounded to whole
    cores) on a machine where Caffe would use `most` threads alone."""
    return max(1, most - int(others + 0.5))


def _loaded(name):
    """A library already in this process, or None (never loads a second copy)."""
    try:
        return ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return None


# What sets the thread count, in each library that may be in the process: libgomp (Caffe's
# loops, and the BLAS builds that follow it: OpenBLAS's OpenMP build, and MKL with its GNU
# threading layer), and the BLAS builds that keep a count of their own (OpenBLAS's pthread
# build, BLIS). MKL follows libgomp's count only until MKL_NUM_THREADS (which `python -m
# bench --threads` sets) or its own setter fixes one, so it is set directly too.
THREAD_SETTERS = (('libgomp.so.1', 'omp_set_num_threads'),
                  ('libopenblas.so.0', 'openblas_set_num_threads'),
                  ('libblis.so.4', 'bli_thread_set_num_threads'),
                  ('libmkl_rt.so.3', 'MKL_Set_Num_Threads'))


class ThreadSetter:
    """Sets the thread count of the OpenMP runtime and of the BLAS Caffe runs on."""

    def __init__(self):
        self.calls = []
        for name, function in THREAD_SETTERS:
            library = _loaded(name)
            # Another BLAS may stand in under the name (bench/blas.py, caffe_env.py): MKL
            # has no such function, and has its own entry.
            call = getattr(library, function, None) if library is not None else None
            if call is not None:
                self.calls.append(call)

    def __call__(self, count):
        for call in self.calls:
            call(ctypes.c_int(count))


def default_threads():
    """The thread count Caffe's libraries use by themselves."""
    value = os.environ.get('OMP_NUM_THREADS', '').split(',')[0].strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0))


class CoreShare:
    """Measures the other programs' use of this process's cores and sets Caffe's thread
    count to what they leave; `adapt()` is cheap between measurements."""

    def __init__(self, set_threads=None, most=None, clock=time.monotonic,
                 busy=None, own=own_cpu_seconds):
        cpus = os.sched_getaffinity(0)
        self.most = most or default_threads()
        self.set_threads = set_threads
        self.clock, self.own = clock, own
        self.busy = busy or (lambda: busy_ticks(cpus))
        self.threads = self.most
        self.others = 0.0
        self.window = None

    def restart(self):
        """Back to the libraries' own thread count, measuring afresh (a new run)."""
        self.change(self.most)
        self.window = None

    def change(self, threads):
        if threads != self.threads:
            if self.set_threads is None:
                self.set_threads = ThreadSetter()
            self.set_threads(threads)
            self.threads = threads

    def adapt(self):
        """Call once per iteration or image: at most every WINDOW_SECONDS it measures and
        sets the thread count. Returns the thread count."""
        if self.most <= 1:
            return self.threads
        now = self.clock()
        if self.window is not None and now - self.window[0] < WINDOW_SECONDS:
            return self.threads
        previous, self.window = self.window, (now, self.busy(), self.own())
        if previous is None or now - previous[0] > STALE_SECONDS:
            return self.threads
        (started, busy, own), (_, busy_now, own_now) = previous, self.window
        elapsed = now - started
        self.others = max(0.0, ((busy_now - busy) / CLOCK_TICKS - (own_now - own)) / elapsed)
        self.change(threads_for(self.others, self.most))
        return self.threads


# The variable that turns the fitting off ('0'); on by default.
SWITCH = 'FCN_ADAPT_THREADS'

_share = None


def share():
    """The process's CoreShare, created on the first call (after caffe is loaded), or
    None when FCN_ADAPT_THREADS=0."""
    global _share
    if _share is None and os.environ.get(SWITCH, '1') != '0':
        _share = CoreShare()
    return _share


def adapt():
    """share().adapt() where fitting is on: call once per iteration or image."""
    current = share()
    return current.adapt() if current is not None else None


def restart():
    """The libraries' own thread count again, measured afresh (a new run starts)."""
    if _share is not None:
        _share.restart()
