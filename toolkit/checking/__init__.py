"""Checking: an export against its Keras model. Input cases (`inputs`), the one run-and-compare loop
(`loop`), `verify` in chosen runtimes (`verify`), the export-time check (`parity`), stateful and chunked
runs through the state map (`carry`, `streaming`), results that test true when they pass (`results`,
`steps`, `samples`), float32 rounding (`rounding`), a mixed-precision model's tolerance and failure text
(`precision`), and the plain-text tables (`report`)."""
