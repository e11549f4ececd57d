"""Every runtime and tier, named once: its runner, why a model is not valid in it, what it computes in.

`verify --runtimes`, `export --runtimes`/`--target`, `run --runtime` and `bench --runtimes` all read
`RUNTIMES`. Each runtime opens lazily, so a missing Node, browser or package is a one-line error from
`open`, never an import failure. Nothing here imports TensorFlow.

Adding a runtime is its runner module (a `Runner` subclass with its own `_run`, an `open`, a `problem`
where some exports are not valid in it), one `register(Runtime(...))` line here naming the package that
computes it (a report lists that package's version), its tests in tests/test_runtimes.py, and the module's
name in docs/layout.md (tests/test_docs.py checks that every module is named there). Where `lstm-onnx
setup` installs it, also `toolkit.runtimes.install` and pyproject's `runtimes` extra.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from toolkit.errors import InputError
from toolkit.onnxfile.tiers import nothing_to_convert
from toolkit.runtimes import chromium, js, openvino, rnn_scan
from toolkit.runtimes.base import Runner
from toolkit.runtimes.onnxrt import ORT_LEVELS, open_level, open_tier
from toolkit.runtimes.reference import ReferenceRunner, reference_oracle_problem


def valid_everywhere(model: onnx.ModelProto) -> str | None:
    """The `problem` of a runtime with no known defect on our exports."""
    return None


def always() -> bool:
    return True


@dataclass(frozen=True)
class Runtime:
    """A kind of runner, by the name every command uses for it."""

    name: str
    problem: Callable[[onnx.ModelProto], str | None]  # why the model is NOT valid in this runtime; None = valid
    open: Callable[..., Runner]  # (the .onnx file on disk, its parsed proto[, threads]) -> an open runner
    precision: str = "float32"  # what it computes (or stores weights) in: float32, bf16, int8, float16
    engine: str = "onnxruntime"  # what computes: bench's `runtime` column
    timed: bool = False  # a form `bench` times (in this process or its own child: no transfer timed)
    installed: Callable[[], bool] = always  # whether its package is on this machine (checked on use)
    setup: str = ""  # the `lstm-onnx setup --runtimes` name that installs it ("" for one always installed)
    summary: str = ""  # what it is, for the commands' help (`runtimes_help`)
    package: str = ""  # the Python distribution that computes, whose version a report lists
    npm: str = ""  # or the npm package that computes (under Node, in Chromium's page)
    # True: a rewrite only some exports have (onnxruntime-scan: SimpleRNN's RNN op), run where named and
    # timed by `bench`, never in `all`, whose `--target all` would refuse every other export for it.
    named_alone: bool = False

    @property
    def tier(self) -> bool:
        """A runtime `all` leaves out: not meant to compute Keras' numbers at the float32 tolerances."""
        return self.precision != "float32"

    @property
    def in_all(self) -> bool:
        """In `all` (verify, export --runtimes and --target): every runtime but the tiers and the rewrites."""
        return not (self.tier or self.named_alone)


RUNTIMES: dict[str, Runtime] = {}


def register(runtime: Runtime) -> Runtime:
    """Make a runtime available to every command under its name. `bench` labels its forms by engine and
    precision: a second timed runtime with both the same would share the first's row and timing, silently."""
    same = [r.name for r in RUNTIMES.values() if r.timed and runtime.timed and r.name != runtime.name
            and (r.engine, r.precision) == (runtime.engine, runtime.precision)]
    if same:
        raise ValueError(f"Expected a timed runtime with an engine and precision of its own (bench's labels). "
                         f"Received: {runtime.name!r} as {runtime.engine} {runtime.precision}, as {same[0]!r} is")
    RUNTIMES[runtime.name] = runtime
    return runtime


@dataclass(frozen=True)
class RuntimePackages:
    """What the registered runtimes compute with, each once, in registry order."""

    python: tuple[str, ...]  # distributions, as `importlib.metadata` names them
    npm: tuple[str, ...]


def runtime_packages() -> RuntimePackages:
    return RuntimePackages(tuple(dict.fromkeys(r.package for r in RUNTIMES.values() if r.package)),
                           tuple(dict.fromkeys(r.npm for r in RUNTIMES.values() if r.npm)))


for _name in ORT_LEVELS:  # a wrong rewrite shows up as a difference between levels
    register(Runtime(_name, valid_everywhere, open_level(_name), timed=_name == "onnxruntime", package="onnxruntime",
                     summary="" if _name == "onnxruntime" else "a graph optimization level"))
for _tier in ("int8", "float16"):  # the export's precision tiers, derived from a float32 file
    register(Runtime(f"onnxruntime-{_tier}", nothing_to_convert(_tier), open_tier(f"onnxruntime-{_tier}", _tier),
                     precision=_tier, timed=True, package="onnxruntime", summary=f"the {_tier} tier"))
register(Runtime("reference", reference_oracle_problem, lambda path, model, threads=None: ReferenceRunner(model),
                 engine="onnx.reference", package="onnx", summary="onnx.reference, where it is a valid oracle"))
register(Runtime("onnxruntime-node", js.problem, js.open_node, engine="onnxruntime-node", npm="onnxruntime-node",
                 installed=js.node_installed("onnxruntime-node"), setup="node", summary="under Node"))
register(Runtime("onnxruntime-web", js.problem, js.open_web, engine="onnxruntime-web", npm="onnxruntime-web",  # WASM
                 installed=js.node_installed("onnxruntime-web"), setup="web", summary="WASM under Node"))
register(Runtime("chromium", js.problem, chromium.open_chromium, engine="chromium", npm="onnxruntime-web",  # in a page
                 installed=chromium.installed, setup="chromium",
                 summary="onnxruntime-web in headless Chromium"))
register(Runtime("openvino", openvino.problem, openvino.open_f32, engine="openvino", timed=True, package="openvino",
                 installed=openvino.installed, setup="openvino", summary="CPU, f32"))
# OpenVINO's default precision (bf16 on CPUs that have it) is off by 5e-4 to 0.16 on the variant matrix:
# named alone, it is run and reported with its error, never as passing at float32.
register(Runtime("openvino-bf16", openvino.problem_bf16, openvino.open_default, precision="bf16", engine="openvino",
                 timed=True, installed=openvino.installed, setup="openvino", package="openvino",
                 summary="its default precision, a tier"))
# ONNX Runtime's RNN kernel applies tanh one value at a time: 3.6x slower at batch 32 x 100 than the same
# recurrence as MatMul + Scan, which this runtime rewrites each RNN op into at open (the file unchanged).
register(Runtime(rnn_scan.NAME, rnn_scan.problem, rnn_scan.open_scan, engine=rnn_scan.NAME, timed=True, named_alone=True,
                 package="onnxruntime", summary="SimpleRNN's RNN op run as MatMul + Scan, where named"))


def runtimes_help(names: Sequence[str] | None = None) -> str:
    """The runtimes (these, or every registered one) as the commands' help lists them: each name with what
    it is; `all` is every one but the tiers and the rewrites named alone."""
    listed = [RUNTIMES[n] for n in names] if names is not None else list(RUNTIMES.values())
    text = ", ".join(f"{r.name} ({r.summary})" if r.summary else r.name for r in listed)
    left_out = [r.name for r in RUNTIMES.values() if not r.in_all]
    return text if names is not None else f"{text}; or all (every one but {', '.join(left_out)})"


def runtimes_named(names: Sequence[str]) -> list[Runtime]:
    """The registered runtimes of these names (`all`: every one but the tiers and the rewrites named
    alone); one unknown name refuses them all, listing the valid ones."""
    if list(names) == ["all"]:
        names = [n for n, r in RUNTIMES.items() if r.in_all]
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        raise InputError(f"Expected runtimes among {list(RUNTIMES)} or all. Received: {list(names)}")
    return [RUNTIMES[n] for n in names]


def not_installed(runtime: Runtime) -> str:
    """How a runtime that is not installed is listed: `not installed: `lstm-onnx setup --runtimes X``."""
    return f"not installed: `lstm-onnx setup --runtimes {runtime.setup}`"


def installed_of(names: Sequence[str]) -> tuple[list[Runtime], list[Runtime]]:
    """The named runtimes (`all` too) split into those installed here and those not (nothing is opened)."""
    chosen = runtimes_named(names)
    return [r for r in chosen if r.installed()], [r for r in chosen if not r.installed()]


# `run --runtime`: the runtimes a deploy machine runs in Python (`bench --record` records one of these)
RUN_ENGINES = ("onnxruntime", "openvino", rnn_scan.NAME)
RUN_PRECISIONS = ("f32", "bf16")


def open_runner(path: str | Path, runtime: str | None = None, precision: str = "f32",
                threads: int | None = None) -> Runner:
    """A runner of the file at `path` (`lstm-onnx run --runtime --precision --threads`): f32 is exact;
    bf16 (OpenVINO's CPU default) is the `openvino-bf16` tier, off by 2e-3 to 1.5e-2. A runtime runs only
    what its `problem` says it computes correctly, and refuses the rest, saying why. Without a runtime or
    thread count, those `bench --record` recorded in the file (`metadata.SessionDefaults`), else ONNX
    Runtime at its default threads."""
    from toolkit.onnxfile.metadata import read_session_defaults
    from toolkit.onnxfile.model import load_onnx
    from toolkit.runtimes.threads import check_threads, max_threads

    model = load_onnx(path)
    recorded = read_session_defaults(model)
    if recorded is not None and recorded.runtime in RUN_ENGINES and runtime in (None, recorded.runtime):
        runtime = recorded.runtime
        threads = threads or min(recorded.threads, max_threads())
    runtime = runtime or "onnxruntime"
    if runtime not in RUN_ENGINES:
        raise InputError(f"Expected --runtime among {list(RUN_ENGINES)}. Received: {runtime!r}")
    name = runtime if precision == "f32" else f"{runtime}-{precision}"
    if precision not in RUN_PRECISIONS or name not in RUNTIMES:
        allowed = [p for p in RUN_PRECISIONS if (runtime if p == "f32" else f"{runtime}-{p}") in RUNTIMES]
        raise InputError(f"Expected --precision among {allowed} with {runtime}. Received: {precision!r}")
    if threads is not None:
        check_threads([threads])
    return open_checked(RUNTIMES[name], Path(path), model, threads)


def open_checked(runtime: Runtime, path: Path, model: onnx.ModelProto, threads: int | None = None) -> Runner:
    """A runner of `model` in `runtime`, refused in one line where the model is not valid there (`run`)."""
    found = runtime.problem(model)
    if found:
        raise InputError(f"Expected a model {runtime.name} computes correctly. Received: {path.name}: {found}")
    return runtime.open(path, model, threads=threads) if threads else runtime.open(path, model)
