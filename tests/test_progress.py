"""Progress on long work: a bar on stderr when stderr is a terminal (a real pseudo-terminal here), nothing
in --json mode or when stderr is a pipe, and the library's default shows nothing at all."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolkit.cli import cli
from toolkit.export.suite import export_stacks
from toolkit.models.builder import StackConfig, build_stack, stack_configs
from toolkit.progress import Progress

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args, terminal: bool) -> tuple[int, str, str]:
    """Run `python -m toolkit.cli ARGS` with stderr on a pseudo-terminal (or a pipe); (code, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "toolkit.cli", *map(str, args)]
    if not terminal:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=slave, env=env)
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        out = process.stdout.read().decode()
        process.stdout.close()
        return process.wait(60), out, b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("progress")
    build_stack(StackConfig(timesteps=None, return_sequences=True)).save(folder / "m.keras")
    assert CliRunner().invoke(cli, ["export", str(folder / "m.keras"), "-o", str(folder / "m.onnx")]).exit_code == 0
    return folder


@pytest.mark.slow
def test_verify_shows_a_bar_on_a_terminal_and_nothing_in_json_or_a_pipe(saved):
    args = ["verify", saved / "m.onnx", "--keras", saved / "m.keras", "--runtimes", "onnxruntime,onnxruntime-disabled"]
    code, out, err = run_cli(args, terminal=True)
    assert code == 0 and "PASS" in out
    assert re.search(r"verify.*\d+/\d+", err) and "opened onnxruntime-disabled" in err
    code, out, err = run_cli([*args, "--json"], terminal=True)
    assert code == 0 and err == "" and out.lstrip().startswith("{")
    code, out, err = run_cli(args, terminal=False)
    assert code == 0 and err == ""


@pytest.mark.slow
def test_a_suite_export_shows_a_bar_per_model_on_a_terminal(tmp_path):
    code, out, err = run_cli(["export", "-o", tmp_path, "--units", 2], terminal=True)
    assert code == 0, out + err
    assert re.search(r"export.*4/4", err)


class Recorded(Progress):
    """A Progress that keeps what it was told (a real subclass, as the CLI's bar is)."""

    def __init__(self):
        self.events = []

    def begin(self, total, label):
        self.events.append(("begin", total, label))

    def advance(self, item=""):
        self.events.append(("advance", item))


def test_export_stacks_reports_each_model_and_the_default_prints_nothing(tmp_path, capfd):
    recorded = Recorded()
    export_stacks(stack_configs()[:2], tmp_path / "a", progress=recorded)
    assert recorded.events[0] == ("begin", 2, "export") and len(recorded.events) == 3
    export_stacks(stack_configs()[:1], tmp_path / "b")
    assert capfd.readouterr().err == ""
