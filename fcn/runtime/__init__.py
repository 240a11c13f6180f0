"""What Caffe runs on: its environment and BLAS (caffe_env), the thread count fitted to
the free cores (threads), CPU or GPU (devices)."""
