"""The export pipeline: `export_model` and its named steps (`exporter`), its result (`result`), the tier and
metadata step (`record`), graph surgery (`graph`), a tf.Module SavedModel's export through tf2onnx
(`tf_module`, `tf_module_export`), the suite of stacks (`suite`) and all-or-nothing file sets (`fileset`)."""
