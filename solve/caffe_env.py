"""The environment every Caffe process of the project starts with.

Caffe's libraries read these variables once, when they are loaded, so they are set
(unless the user set them) by every tool before it imports caffe: `netfiles` imports this
module first, and so does every command-line tool and the test set-up; the Makefile
exports the same values for whatever else it starts (a test checks they agree).
`python -m bench` starts its Caffe workers with them and, for comparison, without them.
"""
import os

# How long an OpenMP thread of Caffe (its patched im2col/col2im loops, and the OpenMP
# OpenBLAS, which runs in the same libgomp pool) spins before it sleeps while it waits for
# work or for the other threads. libgomp's default, 300,000 spins, is about 8.5 ms on this
# project's AMD EPYC (28 ns a spin): a spinning thread holds a core for whole scheduler
# time slices, and training next to one other busy process ran 5-7x slower than alone.
# 1,000 spins (about 30 us) still bridge most gaps between one parallel region and the
# next; a thread that waits longer sleeps and gives its core back. Beside one busy
# process the toy FCN then trained 1.6x slower than alone instead of 5-6x; alone the
# cost was within the noise of a few percent (BENCHMARKS.md, which also shows the other
# settings tried; `python -m bench --parts contention` measures it).
THREAD_ENV = {
    'GOMP_SPINCOUNT': '1000',
}

CAFFE_ENV = {
    # Glog's start-up chatter (every layer's set-up) is off unless asked for.
    'GLOG_minloglevel': '2',
    **THREAD_ENV,
}


def apply(environ=os.environ):
    """Set each of CAFFE_ENV's variables that `environ` does not have yet."""
    for name, value in CAFFE_ENV.items():
        environ.setdefault(name, value)


apply()
