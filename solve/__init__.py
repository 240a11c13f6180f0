"""The commands: solve.py (train), score.py, infer.py, surgery.py, new_model.py,
report.py, demo_report.py, caffe_env.py. Each is thin: arguments, calls into fcn/, exit
status. Run them as scripts (`.venv/bin/python solve/score.py ...`); tests import them
as `solve.score`."""
