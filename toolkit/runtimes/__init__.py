"""Every runtime an export runs in, each a runner with one contract (`base.Runner`: the public
`run(feeds, timeout)` checks the feeds and holds the deadline, then calls the runtime's own `_run`; `close()`
stops every process it started): ONNX Runtime (`onnxrt`), onnx.reference (`reference`), ONNX Runtime for
JavaScript in Node and WASM (`js`) and in headless Chromium (`chromium`), OpenVINO (`openvino`, in a child
process), and the references the exports are compared with: Keras (`keras`), tf.keras or a Keras 2
SavedModel's signature (`keras2`), and a tf.Module SavedModel's signature (`signature`), both signatures in
a bounded child (`keras2_child`). `registry` names each runtime once; `wire` is the one wire form of
tensors for the child runtimes; `feeds` and `threads` hold the checks every runner shares; `install` is
`lstm-onnx setup`. Nothing here imports TensorFlow at import time.
"""
