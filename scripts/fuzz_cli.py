"""Fuzz the `lstm-onnx` CLI with hostile files and options, each case in its own capped process.

    python scripts/fuzz_cli.py                       # every listed case, plus 10 drawn option sets
    python scripts/fuzz_cli.py --budget 300 --random 0 --only keras_

Every case runs `python -m toolkit.cli ARGS` in a subprocess with an RLIMIT_AS cap (--memory-gib) and a
wall-clock limit (--case-timeout); no new case starts once --budget seconds have passed. For each case it
records the exit code, the time, the peak memory (the child's ru_maxrss from wait4), and checks:

- traceback: "Traceback (most recent call last)" anywhere in stderr or stdout;
- abort: a negative exit code (killed by a signal: SIGABRT from ONNX Runtime, SIGSEGV, ...);
- hang: still running at --case-timeout;
- half-written: a failed case changed, added or removed a file; any case left a temporary file
  (`.lstm-onnx-` or `.tmp`) or changed one of the shared input files;
- raw control characters: an ESC or other C0 character (besides newline and tab) in the output.

The hostile files are built first by a helper process (tests/hostile.py and onnx.helper), so this process
stays small: Linux copies a parent's high-water RSS into a child's ru_maxrss across fork and exec, and a
small parent keeps the per-case figures honest. The summary goes to scripts/results/fuzz_cli.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "scripts" / "results" / "fuzz_cli.json"

BUILD = r'''
import json, os, sys
from pathlib import Path
import numpy as np
import onnx
from onnx import TensorProto, helper
import hostile

out = Path(sys.argv[1])
for name, build in [
    ("lstm_4096", lambda: hostile.lstm_units(out, 4096)),
    ("embedding_125m", lambda: hostile.embedding_rows(out, 125_000_000)),
    ("weights_bomb", lambda: hostile.weights_bomb(out, 3_700_000_000 if os.environ.get("FUZZ_FULL") else 256 << 20)),
    ("config_bomb", lambda: hostile.big_config(out, (1 << 30) if os.environ.get("FUZZ_FULL") else 200 << 20)),
    ("time_2e6", lambda: hostile.fixed_time(out, 2_000_000)),
    ("time_1e8", lambda: hostile.fixed_time(out, 100_000_000)),
    ("time_0", lambda: hostile.fixed_time(out, 0)),
    ("members", lambda: hostile.many_members(out, 5000)),
    ("h5_bomb", lambda: hostile.h5_bomb(out, 1536 << 20)),
    ("npz_bomb", lambda: hostile.npz_bomb(out, 1536 << 20)),
    ("einsum_2e8", lambda: hostile.einsum_lie(out, 25_000_000)),
    ("fifo", lambda: hostile.fifo(out)),
    ("dev_zero", lambda: hostile.dev_zero(out)),
    ("seed", lambda: hostile.seed_keras(out)),
]:
    build()

def save(model, name):
    onnx.save(model, str(out / name))

def graph_model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
named = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in ("allow_pickle", "file", "y")]
save(graph_model([helper.make_node("Identity", ["x"], [n.name]) for n in named], [x], named), "keyword_outputs.onnx")
esc = helper.make_tensor_value_info("x\x1b[2J\x1b]0;pwned\x07", TensorProto.FLOAT, [1])
save(graph_model([helper.make_node("Identity", [esc.name], ["out\x1b[31m"])], [esc],
                 [helper.make_tensor_value_info("out\x1b[31m", TensorProto.FLOAT, [1])]), "control_names.onnx")
seq_out = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
save(graph_model([helper.make_node("SequenceConstruct", ["x"], ["s"])], [x], [seq_out]), "sequence_output.onnx")
# A Loop whose trip count is 2**62: `run` never returns without a timeout.
trip = helper.make_tensor("trip", TensorProto.INT64, [], [2**62])
cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
body = helper.make_graph(
    [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Add", ["v_in", "v_in"], ["v_out"])], "body",
    [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
     helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["batch", 2])],
    [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
     helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["batch", 2])])
save(graph_model([helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body)], [x],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [trip, cond]), "endless_loop.onnx")
# 1.5 GiB of external data that no node uses (a sparse file: no disk is spent).
unused = TensorProto(name="unused", data_type=TensorProto.FLOAT, dims=[384 << 20], data_location=TensorProto.EXTERNAL)
for key, value in (("location", "unused.bin"), ("offset", "0"), ("length", str(1536 << 20))):
    unused.external_data.add(key=key, value=value)
with open(out / "unused.bin", "wb") as handle:
    handle.truncate(1536 << 20)
save(graph_model([helper.make_node("Identity", ["x"], ["y"])], [x], [named[2]], [unused]), "external_unused.onnx")
(out / "truncated.onnx").write_bytes((Path(sys.argv[2]) / "case1_sequences.onnx").read_bytes()[:500])

# A --state-io export and its Keras model, then copies with crafted metadata for `verify --stream`.
from toolkit.models.builder import StackConfig, build_stack
from toolkit.export.exporter import export_model
stack = build_stack(StackConfig(layers=1, units=3, timesteps=None, features=2))
stack.save(out / "stream.keras")
streaming = export_model(stack, state_io=True).model
for name, key, value in [("state_map_json", "state_map", "{not json"), ("state_map_list", "state_map", "[1, 2]"),
                         ("state_map_names", "state_map", '{"lstm_1_initial_state_h": "nowhere"}'),
                         ("layers_ints", "layers", "[1]"), ("layers_no_class", "layers", '[{"name": "x"}]'),
                         ("layers_json", "layers", "{"), ("layers_deep", "layers", "[" * 100000)]:
    crafted = onnx.ModelProto()
    crafted.CopyFrom(streaming)
    next(p for p in crafted.metadata_props if p.key == "lstm_onnx." + key).value = value
    save(crafted, f"crafted_{name}.onnx")

np.save(out / "b0.npy", np.zeros((0, 3, 1), np.float32))
np.save(out / "t0.npy", np.zeros((2, 0, 1), np.float32))
np.save(out / "good.npy", np.zeros((2, 3, 1), np.float32))
np.save(out / "big_endian.npy", np.zeros((2, 3, 1), ">f4"))
np.save(out / "x2.npy", np.ones((2, 2), np.float32))
np.save(out / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
np.savez(out / "objects.npz", input=np.array([None, 1.0], dtype=object))
os.mkfifo(out / "fifo.npy")
'''

EXPORTED = ROOT / "exported"


@dataclass
class Case:
    name: str
    args: list[str]
    note: str = ""


@dataclass
class Outcome:
    name: str
    args: list[str]
    returncode: int | None
    seconds: float
    peak_mb: float
    traceback: bool = False
    abort: bool = False
    hang: bool = False
    half_written: list[str] = field(default_factory=list)
    raw_control: bool = False
    error_line: str = ""


def fixed_cases(inp: Path) -> list[Case]:
    """The issue's attacks, one case each (the numbers in the names are the issue's)."""
    case1 = str(EXPORTED / "case1_sequences.onnx")
    cases = [Case(f"keras_{n}", ["export", str(inp / f), "-o", "{out}/m.onnx"]) for n, f in [
        ("lstm_4096", "lstm_4096.keras"), ("embedding_125m", "embedding_125000000.keras"),
        ("weights_bomb", next(p.name for p in inp.glob("weights_bomb_*.keras"))),
        ("config_bomb", next(p.name for p in inp.glob("config_*.keras"))), ("time_2e6", "time_2000000.keras"),
        ("time_1e8", "time_100000000.keras"), ("time_0", "time_0.keras"), ("members", "members_5000.keras"),
        ("fifo", "fifo.keras"), ("dev_zero", "zero.keras"), ("h5_bomb", "h5_bomb_1610612736.keras"),
        ("npz_bomb", "npz_bomb_1610612736.keras"), ("einsum_2e8", "einsum_25000000.keras"),
        ("seed_ok", "seed.keras")]]
    cases += [
        Case("run_batch_0", ["run", case1, "--input", str(inp / "b0.npy")]),
        Case("run_time_0", ["run", case1, "--input", str(inp / "t0.npy")]),
        Case("run_big_endian", ["run", case1, "--input", str(inp / "big_endian.npy")]),
        Case("run_object_npz", ["run", case1, "--input", str(inp / "objects.npz")]),
        Case("run_pickled_npy", ["run", case1, "--input", str(inp / "pickled.npy")]),
        Case("run_fifo_input", ["run", case1, "--input", str(inp / "fifo.npy")]),
        Case("run_repeated_input", ["run", case1, "--input", f"input={inp / 'good.npy'}", "--input", f"input={inp / 'b0.npy'}"]),
        Case("run_keyword_outputs",
             ["run", str(inp / "keyword_outputs.onnx"), "--input", str(inp / "x2.npy"), "-o", "{out}/o.npz"]),
        Case("run_o_folder", ["run", case1, "--input", str(inp / "good.npy"), "-o", "{out}"]),
        Case("run_sequence_output", ["run", str(inp / "sequence_output.onnx"), "--input", str(inp / "x2.npy")]),
        Case("run_endless_loop", ["run", str(inp / "endless_loop.onnx"), "--input", str(inp / "x2.npy"), "--timeout", "5"]),
        Case("inspect_control_names", ["inspect", str(inp / "control_names.onnx")]),
        Case("inspect_external_unused", ["inspect", str(inp / "external_unused.onnx")]),
        Case("inspect_truncated", ["inspect", str(inp / "truncated.onnx")]),
        Case("inspect_dev_zero", ["inspect", "/dev/zero"]),
        Case("export_o_onto_file", ["export", "-o", str(inp / "good.npy")]),
        Case("export_keras_o_folder", ["export", str(inp / "seed.keras"), "-o", "{out}"]),
        Case("export_triton_onto_file",
             ["export", str(inp / "seed.keras"), "-o", "{out}/m.onnx", "--triton", str(inp / "good.npy")]),
    ]
    cases += [Case(f"verify_stream_{p.stem[8:]}", ["verify", str(p), "--keras", str(inp / "stream.keras"), "--stream", "2"])
              for p in sorted(inp.glob("crafted_*.onnx"))]
    for option, value in [("--units", "100000"), ("--features", "300000000"), ("--layers", "5000"),
                          ("--timesteps", "100000000"), ("--timesteps", "0"), ("--opset", "99"), ("--atol", "abc"),
                          ("--rtol", "nope:1e-3"), ("--output-name", "="), ("--cell", "lstm,foo"), ("--variant", "nope"),
                          ("--masking", "\x1b[2J"), ("--bidirectional", "x"), ("--padding", "up"), ("--seed", "-1")]:
        cases.append(Case(f"option_{option.strip('-')}_{value[:12]}", ["export", option, value, "-o", "{out}/suite"]))
    return cases


# Per option: values a user means (drawn 60% of the time, so some cases export for real) and values a
# hostile or careless user types.
_VALID = {"--layers": ["1", "2", "3"], "--units": ["1", "4", "16"], "--timesteps": ["1", "5", "none"],
          "--features": ["1", "3"], "--seed": ["0", "7"], "--opset": ["14", "17", "18"],
          "--cell": ["gru", "simple_rnn", "lstm,gru"], "--bidirectional": ["sum", "none"],
          "--masking": ["masking", "embedding"], "--atol": ["1e-5", "lstm_2_last:1e-4"], "--padding": ["left"]}
_HOSTILE = ["0", "-1", "1e3", "100000", "300000000", "9" * 30, "nan", "none", "x\x1b[1m", "", "lstm,,gru", "=:"]


def random_cases(rng: random.Random, count: int) -> list[Case]:
    """Builder options drawn from `_VALID` and `_HOSTILE`, one to three at a time."""
    cases = []
    for index in range(count):
        args = ["export", "-o", "{out}/suite"]
        for option in rng.sample(sorted(_VALID), rng.randint(1, 3)):
            args += [option, rng.choice(_VALID[option] if rng.random() < 0.6 else _HOSTILE)]
        cases.append(Case(f"random_{index}", args))
    return cases


def snapshot(folder: Path) -> dict[str, str]:
    """Name -> sha256 of each regular file (FIFOs, devices and links are listed, never read)."""
    state = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file():
            state[str(path.relative_to(folder))] = "special"
            continue
        if path.stat().st_size > (64 << 20):  # the sparse 1.5 GiB file: size and mtime are enough
            state[str(path.relative_to(folder))] = f"{path.stat().st_size}:{path.stat().st_mtime_ns}"
            continue
        state[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def run_case(case: Case, inputs: Path, work: Path, memory_gib: float, timeout: float) -> Outcome:
    out = work / case.name
    out.mkdir(parents=True)
    args = [a.replace("{out}", str(out)) for a in case.args]
    before, inputs_before = snapshot(out), snapshot(inputs)
    cap = int(memory_gib * (1 << 30))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    # Output to files, not pipes, so the child can be reaped with wait4, which gives its own rusage.
    with tempfile.TemporaryFile() as stdout_file, tempfile.TemporaryFile() as stderr_file:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "toolkit.cli", *args], stdout=stdout_file, stderr=stderr_file,
                                 stdin=subprocess.DEVNULL, env=env, cwd=out, preexec_fn=limit)
        status, usage, hang = _reap(child.pid, timeout)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        stdout_file.seek(0)
        stderr_file.seek(0)
        stdout, stderr = stdout_file.read(), stderr_file.read()
    text = (stdout + stderr).decode("utf-8", "replace")
    after = snapshot(out)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    half = [k for k in after if ".lstm-onnx-" in k or k.endswith(".tmp")]
    if child.returncode != 0:
        half += changed
    if snapshot(inputs) != inputs_before:
        half.append("inputs changed")
    control = any(ch in text for ch in "\x1b\x00\x07\x08\x0b\x0c\x7f")
    return Outcome(name=case.name, args=args, returncode=None if hang else child.returncode, seconds=round(seconds, 2),
                   peak_mb=round(usage.ru_maxrss / 1024, 1), traceback="Traceback (most recent call last)" in text,
                   abort=(child.returncode or 0) < 0 and not hang, hang=hang, half_written=sorted(set(half)),
                   raw_control=control, error_line=_last_line(text)[:300])


def _last_line(text: str) -> str:
    """The `Error:` line if any, else the last line that is not TensorFlow's start-up chatter."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(("I0000", "WARNING: All log"))]
    errors = [line for line in lines if line.startswith("Error:")]
    return (errors or lines or [""])[-1]


def _reap(pid: int, timeout: float) -> tuple[int, resource.struct_rusage, bool]:
    """Wait for the child up to `timeout` (then SIGKILL it); its exit status and its own rusage."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage, False
        time.sleep(0.05)
    os.kill(pid, 9)
    _, status, usage = os.wait4(pid, 0)
    return status, usage, True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=900, help="Seconds after which no new case starts.")
    parser.add_argument("--case-timeout", type=float, default=120)
    parser.add_argument("--memory-gib", type=float, default=8.0, help="RLIMIT_AS of each case.")
    parser.add_argument("--random", type=int, default=10, help="Drawn option sets besides the listed cases.")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--only", default="", help="Run only cases whose name starts with this.")
    parser.add_argument("--full", action="store_true", help="The issue's full-size bombs (3.7 GB weights, 1 GB config).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fuzz_cli_") as tmp:
        inputs, work = Path(tmp, "inputs"), Path(tmp, "work")
        inputs.mkdir()
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", TF_CPP_MIN_LOG_LEVEL="3",
                   **({"FUZZ_FULL": "1"} if args.full else {}))
        built = subprocess.run([sys.executable, "-c", BUILD, str(inputs), str(EXPORTED)], env=env, capture_output=True,
                               text=True)
        if built.returncode:
            print(f"building the hostile files failed:\n{built.stderr[-3000:]}", file=sys.stderr)
            return 2
        cases = [c for c in fixed_cases(inputs) + random_cases(random.Random(args.seed), args.random)
                 if c.name.startswith(args.only)]
        started, outcomes = time.perf_counter(), []
        for case in cases:
            if time.perf_counter() - started > args.budget:
                break
            outcome = run_case(case, inputs, work, args.memory_gib, args.case_timeout)
            outcomes.append(outcome)
            flags = [f for f in ("traceback", "abort", "hang", "raw_control") if getattr(outcome, f)]
            flags += ["half-written"] if outcome.half_written else []
            print(f"{outcome.name:<34} rc={outcome.returncode!s:<5} {outcome.seconds:7.2f}s {outcome.peak_mb:8.1f}MB "
                  f"{' '.join(flags) or 'ok'}  {outcome.error_line[:110]!r}", flush=True)
    summary = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cases_listed": len(cases),
        "ran": len(outcomes), "tracebacks": sum(o.traceback for o in outcomes), "aborts": sum(o.abort for o in outcomes),
        "hangs": sum(o.hang for o in outcomes), "half_written": sum(bool(o.half_written) for o in outcomes),
        "raw_control": sum(o.raw_control for o in outcomes),
        "peak_mb_max": max((o.peak_mb for o in outcomes), default=0.0), "memory_cap_gib": args.memory_gib,
        "seconds": round(time.perf_counter() - started, 1), "cases": [asdict(o) for o in outcomes],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "cases"}))
    bad = summary["tracebacks"] + summary["aborts"] + summary["hangs"] + summary["half_written"] + summary["raw_control"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
