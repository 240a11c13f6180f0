#!/usr/bin/env python3
"""Which BLAS Caffe runs on here, and why; `--prepare` makes the chosen BLAS ready (`make
caffe` runs it); `-- COMMAND ...` runs a command with Caffe's environment set (Caffe's C++
tests run so). The choice itself: fcn/runtime/caffe_env.py, whose --help says more.

Run as the library's own entry point: imported, that module sets Caffe's environment at
once, which these options must do themselves (after --prepare, with the command).
"""
import runpy

if __name__ == '__main__':
    runpy.run_module('fcn.runtime.caffe_env', run_name='__main__', alter_sys=True)
