"""The main job: export a family of built stacks into a folder with a `manifest.json`.

`lstm-onnx export` with no model file lands here: one export per flag combination of the last layer
(the post's four by default), each proven against Keras, then written with a manifest that records
file, flags, output names and shapes, sha256 and parity figures. Nothing is written unless every model
passes (or `keep_failed` is set), so a folder never holds a mix of old and new exports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit import __version__
from toolkit.checking.results import ParityReport
from toolkit.errors import InputError, OutputError
from toolkit.export.exporter import export_model
from toolkit.export.fileset import write_file_set
from toolkit.export.record import parity_metadata
from toolkit.export.result import ExportResult
from toolkit.models.builder import StackConfig, build_stack, stack_budget
from toolkit.models.naming import default_output_names
from toolkit.onnxfile.metadata import read_opset, versions
from toolkit.options import ExportOptions
from toolkit.progress import Progress
from toolkit.safety.limits import check_budget
from toolkit.tolerance import Tolerances

MANIFEST_NAME = "manifest.json"


@dataclass
class SuiteEntry:
    config: StackConfig
    file: str
    result: ExportResult


@dataclass
class SuiteResult:
    out_dir: Path
    entries: list[SuiteEntry]
    written: list[Path] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(entry.result.passed for entry in self.entries)

    def manifest(self) -> dict:
        return build_manifest(self.entries)

    def write(self) -> list[Path]:
        """Write the models and the manifest that records their hashes in one switch (`write_file_set`):
        never a mix of old and new. Models the previous manifest listed and this one does not go too."""
        manifest_text = json.dumps(self.manifest(), indent=2, sort_keys=False) + "\n"
        files = {entry.file: entry.result.data for entry in self.entries} | {MANIFEST_NAME: manifest_text.encode()}
        self.written.extend(write_file_set(self.out_dir, files, remove=_previous_files).files)
        return self.written

    @property
    def items(self) -> list[tuple[str, ParityReport]]:
        return [item for entry in self.entries for item in entry.result.items(entry.file)]

    @property
    def exported(self) -> list[tuple[str, ExportResult]]:
        return [(entry.config.name, entry.result) for entry in self.entries]

    @property
    def warnings(self) -> list[str]:
        return [f"{entry.file}: {w}" for entry in self.entries for w in entry.result.warnings]

    @property
    def notes(self) -> list[str]:
        return [f"{entry.file}: {n}" for entry in self.entries for n in entry.result.notes]

    def to_json(self) -> dict[str, Any]:
        """What a report says about the suite (the CLI's `--json`)."""
        return {"passed": self.passed, "written": [str(p) for p in self.written],
                "models": [{"file": e.file, **e.result.to_json()} for e in self.entries]}


def build_manifest(entries: Sequence[SuiteEntry]) -> dict:
    opsets = sorted({read_opset(e.result.model) for e in entries})
    return {
        "generator": f"lstm-onnx {__version__}",
        "opset": opsets[0] if len(opsets) == 1 else opsets,
        "versions": versions(),
        "models": [
            {
                "file": entry.file,
                "case": entry.config.name,
                "config": entry.config.to_json(),
                "inputs": [t.to_json() for t in entry.result.inputs],
                "outputs": [o.to_json() for o in entry.result.outputs],
                "fused_ops": entry.result.fused_ops,
                "sha256": entry.result.sha256,
                "parity": parity_metadata(entry.result.parity),
            }
            for entry in entries
        ],
    }


def _check_keys(kind: str, keys: Sequence[str], known: Sequence[str]) -> None:
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise InputError(f"Expected {kind} among the outputs {sorted(set(known))}. Received unknown key(s): {unknown}")


def export_stacks(configs: Sequence[StackConfig], out_dir: str | Path, options: ExportOptions | None = None, *,
                  keep_failed: bool = False, write: bool = True, progress: Progress = Progress(),
                  **changes: Any) -> SuiteResult:
    """Build, export and check each config; write them and the manifest when all pass.

    `options.output_names` maps default names to new ones across every stack; `changes` replace fields
    of `options`, as in `export_model`.
    """
    options = (options or ExportOptions()).replace(**changes)
    if not configs:
        raise InputError("Expected at least one stack configuration. Received: none")
    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        raise OutputError(f"Expected an output folder. Received: {str(target)!r}, which is a file")
    for config in configs:  # before Keras allocates anything
        check_budget(stack_budget(config), f"stack {config.name}", options.limits)
    models = [(config, build_stack(config)) for config in configs]
    final_names = _final_names(models, options)
    tolerances = options.tolerances
    entries = []
    progress.begin(len(models), "export")
    for config, model in models:
        names = final_names[config.name]
        own = Tolerances(tolerances.default, {k: v for k, v in tolerances.per_output.items() if k in names})
        result = export_model(model, options.replace(output_names=names, tolerances=own), seed=config.seed,
                              source={"builder": config.to_json()})
        entries.append(SuiteEntry(config=config, file=f"{config.name}.onnx", result=result))
        progress.advance(config.name)
    progress.end()
    suite = SuiteResult(out_dir=target, entries=entries)
    if write and (suite.passed or keep_failed):
        suite.write()
    return suite


def _previous_files(folder: Path) -> list[str]:
    """The model files the folder's current manifest lists, when lstm-onnx wrote that manifest (its
    `generator`) and each file is still the one it recorded (its `sha256`): a manifest of another tool, or
    a file changed since, is left alone. Plain `.onnx` names only; none if unreadable. Called by
    `write_file_set` with the folder lock held, so no other writer changes the manifest meanwhile."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        if not str(manifest.get("generator", "")).startswith("lstm-onnx "):
            return []
        listed = {str(model["file"]): str(model["sha256"]) for model in manifest.get("models", [])}
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return []
    plain = [name for name in listed if name.endswith(".onnx") and "/" not in name and not name.startswith(".")]
    return [name for name in plain if _sha256(folder / name) == listed[name]]


def _sha256(path: Path) -> str | None:
    if path.is_symlink() or not path.is_file():
        return None
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _final_names(models: Sequence[tuple[StackConfig, Any]], options: ExportOptions) -> dict[str, list[str]]:
    """Each stack's output names after the renames, which may name an output of any of the stacks."""
    if options.output_names is not None and not isinstance(options.output_names, Mapping):
        raise InputError(f"Expected output names as a mapping DEFAULT=NEW for several stacks. "
                         f"Received: {list(options.output_names)}")
    defaults = {config.name: default_output_names(model) for config, model in models}
    renames = dict(options.output_names or {})
    _check_keys("--output-name keys", list(renames), [name for names in defaults.values() for name in names])
    final_names = {k: [renames.get(n, n) for n in v] for k, v in defaults.items()}
    _check_keys("tolerance keys", list(options.tolerances.per_output), [n for v in final_names.values() for n in v])
    return final_names


def read_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"Expected a manifest at {str(path)!r}. Received: no such file")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"Expected a JSON manifest at {str(path)!r}. Received: {type(exc).__name__}") from None
    return manifest
