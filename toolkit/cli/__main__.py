"""`python -m toolkit.cli`: the same command as `lstm-onnx` (tests and child processes call it)."""

from toolkit.cli import main

main()
