"""The environment every Caffe process of the project starts with.

Caffe's libraries read these variables once, when they are loaded, so they are set
(unless the user set them) by every tool before it imports caffe: `netfiles` imports this
module first, and so does every command-line tool and the test set-up; the Makefile
exports the same values for whatever else it starts (a test checks they agree).
How many threads Caffe runs is not set here but while it runs (cores.py): it depends on
what else the machine is doing.
"""
import os

CAFFE_ENV = {
    # Glog's start-up chatter (every layer's set-up) is off unless asked for.
    'GLOG_minloglevel': '2',
}


def apply(environ=os.environ):
    """Set each of CAFFE_ENV's variables that `environ` does not have yet."""
    for name, value in CAFFE_ENV.items():
        environ.setdefault(name, value)


apply()
