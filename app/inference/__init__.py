"""Model registry, ONNX sessions, pre/post-processing and the worker gate."""
