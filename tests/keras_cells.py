"""Keras' own test cells (`keras/src/layers/rnn/rnn_test.py`, Keras 3.15): custom cells with one and two
states and all-ones weights, whose outputs Keras' tests hard-code. Defined inside a function: Keras
imports no test module, and each test gets classes of its own."""

from __future__ import annotations


def keras_cells():
    """Keras' test cells, as `rnn_test.py` writes them (the two-state cell reads its first state twice)."""
    import keras
    from keras import ops

    class OneStateRNNCell(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = self.state_size = units

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="ones", name="kernel")
            self.recurrent_kernel = self.add_weight(shape=(self.units, self.units), initializer="ones",
                                                    name="recurrent_kernel")

        def call(self, inputs, states):
            output = ops.matmul(inputs, self.kernel) + ops.matmul(states[0], self.recurrent_kernel)
            return output, [output]

    class TwoStatesRNNCell(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units, self.state_size, self.output_size = units, [units, units], units

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="ones", name="kernel")
            self.recurrent_kernel_1 = self.add_weight(shape=(self.units, self.units), initializer="ones",
                                                      name="recurrent_kernel_1")
            self.recurrent_kernel_2 = self.add_weight(shape=(self.units, self.units), initializer="ones",
                                                      name="recurrent_kernel_2")

        def call(self, inputs, states):
            h = ops.matmul(inputs, self.kernel)
            output_1 = h + ops.matmul(states[0], self.recurrent_kernel_1)
            output_2 = h + ops.matmul(states[0], self.recurrent_kernel_2)
            return output_1 + output_2, [output_1, output_2]

    return OneStateRNNCell, TwoStatesRNNCell
