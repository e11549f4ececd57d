"""How close ONNX Runtime comes to Keras, per cell type, as a multiple of the default tolerance.

    python scripts/tolerance_scan.py        # about a minute on 2 cores

1.0 means an element sits exactly at atol 1e-6 + rtol 1e-5. The RNN_OP_TOLERANCE comment in
toolkit/checking/results.py quotes this script's figures.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from toolkit.export.exporter import export_model  # noqa: E402
from toolkit.models.builder import StackConfig, build_stack  # noqa: E402
from toolkit.runtimes.keras import keras_outputs  # noqa: E402
from toolkit.runtimes.onnxrt import OnnxRunner  # noqa: E402
from toolkit.tolerance import Tolerances


def main() -> None:
    loose = Tolerances.parse(atol=["1"], rtol=["1"])  # the scan measures; it does not judge
    for cell in ["lstm", "gru", "simple_rnn"]:
        worst = []
        for units in (1, 8, 64):
            for seed in range(3):
                for steps in (5, 50, 200):
                    config = StackConfig(layers=2, units=units, timesteps=None, features=4, cell=cell,
                                         return_sequences=True, return_state=True, seed=seed)
                    model = build_stack(config)
                    runner = OnnxRunner(export_model(model, tolerances=loose).model)
                    x = np.random.default_rng(seed).standard_normal((4, steps, 4)).astype(np.float32)
                    expected = keras_outputs(model, {"input": x})
                    actual = runner.run({"input": x})
                    factor = max(float((np.abs(o - k) / (1e-6 + 1e-5 * np.abs(k))).max())
                                 for k, o in zip(expected, actual.values()))
                    worst.append((factor, units, seed, steps))
        worst.sort(reverse=True)
        print(f"{cell:<11} worst multiples of the default tolerance: "
              + ", ".join(f"{f:.2f} (units {u}, seed {s}, {t} steps)" for f, u, s, t in worst[:3]))


if __name__ == "__main__":
    main()
