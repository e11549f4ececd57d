"""Safety: what lstm-onnx checks before a library sees a file. A `.keras` archive's bounds (`limits`), its
parameter and activation counts (`budget`, `shapes`), HDF5 walked by object with bounds first (`hdf5`,
`weights_scan`), files opened as regular files only (`files`), and the private copy every Keras 2 reader
works on (`private`). The ground floor of the stages: it imports only `toolkit`'s top-level modules."""
