"""README's resource promise ("2 GB and 120 s for a file that passes the limits"), as a test over the red
team's round-4 inputs (issue 25): each goes through `lstm-onnx export` in a fresh process and must be
refused in one line, or finish, within 120 s and 2 GB of peak resident memory (polled from /proc: the
process's own high-water mark, or it and its children together), and leave no private copy behind in
its temporary folder.

Every input is built here at the issue's own scale (they are small files: the cost was in reading them),
except the spinning SavedModel, which needs its full 80-90 s a call to test the deadline and is slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import hostile
import pytest

ROOT = Path(__file__).resolve().parent.parent
BOUND_BYTES = 2 * 10**9
BOUND_SECONDS = 120


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The folder of attack inputs, with a genuine Keras 2 `.h5` made by real tf.keras to edit."""
    folder = tmp_path_factory.mktemp("promise")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_keras2_models.py"), str(folder), "--only",
                           "post_case3"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


ATTACKS = {
    # F4: 4,000 soft links to one 1 MiB gzip dataset listed as weights: 4.7 GB before.
    "h5_soft_links": (lambda d: hostile.h5_linked_weights(d / "post_case3.h5", d / "soft.h5", 4000, "soft"),
                      "has a soft link at 'model_weights/"),
    "h5_hard_links": (lambda d: hostile.h5_linked_weights(d / "post_case3.h5", d / "hard.h5", 4000, "hard"),
                      "linked elsewhere too (a hard link)"),
    # F5: 10,000 nested groups (.h5), 6,000 in a .keras' weights: 159-268 s and 31-58 s before.
    "h5_deep": (lambda d: hostile.h5_deep(d / "post_case3.h5", d / "deep.h5", 10_000), "nested at most 32 levels"),
    "keras_deep": (lambda d: hostile.keras_deep(d, 6_000), "nested at most 32 levels"),
    # F6: a fixed batch of 4,000,000: 8.46 GB before.
    "fixed_batch": (lambda d: hostile.fixed_batch(d, 4_000_000), "a fixed batch counted whole"),
    # F7: a dynamic axis padded by 3,000,000 steps: still running at 150 s before.
    "padded_dynamic": (lambda d: hostile.padded_dynamic(d, 3_000_000), "the 11 steps the checks draw"),
}


def _kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith(field)), 0)
    except OSError:  # ended meanwhile
        return 0


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def export(model: Path, out: Path, temp: Path) -> tuple[int, str, float, int]:
    """Exit code, stderr, seconds and peak resident bytes of `lstm-onnx export` in a fresh process, killed
    (and so failing the bound) at 1.5 times the stated seconds. The peak is polled from /proc every 50 ms:
    the process's own high-water mark (VmHWM; wait4's ru_maxrss would carry pytest's own across exec), or
    the resident memory of it and its children together (a SavedModel's signature runs in one), if larger."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=str(temp))
    start = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "export", str(model), "-o", str(out)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(child.stderr.read()))
    reader.start()
    peak = 0
    try:
        while child.poll() is None and time.monotonic() - start < 1.5 * BOUND_SECONDS:
            tree = _kib(child.pid, "VmRSS:") + sum(_kib(pid, "VmRSS:") for pid in _children(child.pid))
            peak = max(peak, _kib(child.pid, "VmHWM:"), tree)
            time.sleep(0.05)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        reader.join()
        child.stderr.close()
    return child.returncode, b"".join(errors).decode(), time.monotonic() - start, peak * 1024


def check_promise(model: Path, tmp_path: Path, expected: str) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    code, err, seconds, peak = export(model, tmp_path / "out.onnx", temp)
    print(f"{model.name}: exit {code}, {seconds:.1f} s, peak {peak / 1e9:.2f} GB: {err.strip()[:160]}")
    assert seconds < BOUND_SECONDS and peak < BOUND_BYTES, (seconds, peak, err[-500:])
    if code != 0:  # refused: one line, saying what was expected, nothing written
        assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err[-2000:]
        assert err.startswith("Error: Expected ") and expected in err, err
        assert not (tmp_path / "out.onnx").exists()
    assert not list(temp.glob("lstm-onnx-keras2-*")), "a private copy was left behind"


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_each_round_4_input_is_refused_or_finishes_within_the_stated_bound(inputs, tmp_path, attack):
    build, expected = ATTACKS[attack]
    path = build(inputs)
    assert path.stat().st_size < 2 << 20  # the sizes: 20 KB to 1.5 MB
    check_promise(path, tmp_path, expected)


@pytest.mark.slow
def test_a_signature_spinning_for_minutes_stays_within_the_stated_bound(tmp_path):
    """F8 at full scale: a `While` loop of 15 million steps a call (80-90 s a call on this machine; a load,
    a conversion and several cases made 162-230 s before). The child's deadline (90 s from its start, 100 s
    from the export's) stops it, whatever the machine's load made of the steps before the child."""
    path = hostile.spinning_savedmodel(tmp_path, 15_000_000)
    check_promise(path, tmp_path, "Received: 'spin_15000000': stopped, it ran past")
