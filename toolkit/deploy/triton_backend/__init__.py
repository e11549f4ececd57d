"""The Python-backend model `lstm-onnx serve` puts in its Triton repository (`model.py`, copied as is).

`model.py` runs inside Triton's Python-backend stub, which imports it by path: it needs numpy and
onnxruntime only, and is not imported by lstm-onnx itself.
"""
