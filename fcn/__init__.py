"""The library under the project's commands (solve/), split by concern:

  paths        where the repository, model files, runs and base weights are
  errors       the errors the library raises; how a command reports them
  prototxt     reading and writing net and solver definitions
  nets         model look-up, net files, data-layer parameters, loading a net with weights
  caffemodel   weights files read, checked and rewritten without Caffe
  runs         a run folder's files; what each model starts from
  training/    a training run (trainer), what it starts from (start), several GPUs
  evaluation   confusion matrices, the four metrics, per-image counts, sharded scoring
  inference    segmenting images
  runtimes     what runs a deploy net: Caffe, OpenCV's DNN module, ONNX Runtime
  onnx_export  a deploy net and its weights as an ONNX model
  constants    the data layers' class names and means read without importing Caffe
  surgery      classifier weights carried into FCNs; bilinear upsampling
  declare      a model of one's own declared on a dataset (models/user/NAME.json)
  runtime/     Caffe's environment and BLAS, the thread count, CPU or GPU
  pictures     label PNGs, overlays, plots
  reports/     the demo's report, the reproduction table, the results page
  progress     progress lines for long work

Importing `fcn` does nothing by itself: `fcn.nets` sets Caffe's environment
(fcn.runtime.caffe_env) before anything imports caffe.
"""
