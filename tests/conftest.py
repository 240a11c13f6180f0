"""Shared test set-up: Caffe's environment (quiet glog, the BLAS chosen for this CPU) set
as the tools set it, before any test module imports caffe. The project's packages are
importable through the virtualenv's path file (the Makefile's venv rule writes it)."""
from fcn.runtime import caffe_env  # noqa: F401
