"""Models saved by Keras 2 (tf.keras 2.x, standalone Keras 2.x): read, translated to Keras 3, exported
through the same fused lowering, and checked against the original (`toolkit.runtimes.keras2`)."""
