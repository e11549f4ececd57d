"""The Keras models lstm-onnx reads or builds: Keras 3 `.keras` files (`keras3`), Keras 2 `.h5` files and
SavedModels (`keras2/`, readers only: they translate to a Keras 3 model), the post's stacks (`builder`),
Keras' own loading checks (`loading`), and the names of each output from its layer and role (`naming`)."""
