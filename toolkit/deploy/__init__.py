"""Deploying an export: `lstm-onnx serve` (`serve`, `sandbox`, `proxy`, `gate`), Triton repositories
(`triton`, `triton_build`, `triton_backend/`), and `toolkit.open_stream`, the deploy-side streaming session
(`stream_session`, `stream_runtime`, `step_graph`, `step_guard`)."""
