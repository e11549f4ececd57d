"""The runtimes an export is proven in besides ONNX Runtime in Python: ONNX Runtime for JavaScript in
Node (native, `js`, and WASM) and in headless Chromium (`chromium`), and OpenVINO (`openvino`: f32, and
its default precision as a tier).

Each module offers `open(path, model)` functions returning a runner (`base.RunnerBase`: `run(feeds)`
returns the graph's outputs by name, feeding zeros for state inputs not given; `close()` stops every
process it started) and, where the runtime has known defects, `problem(model)`. `toolkit.checking.loop`
registers them as the runtimes `verify --runtimes` names. Nothing here imports TensorFlow.
"""
