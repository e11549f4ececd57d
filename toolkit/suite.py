"""The main job: export a family of built stacks into a folder with a `manifest.json`.

`lstm-onnx export` with no model file lands here: one export per flag combination of the last layer
(the post's four by default), each proven against Keras, then written with a manifest that records
file, flags, output names and shapes, sha256 and parity figures. Nothing is written unless every model
passes (or `keep_failed` is set), so a folder never holds a mix of old and new exports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from toolkit import __version__
from toolkit.builder import StackConfig, build_stack
from toolkit.compare import Tolerances
from toolkit.errors import InputError
from toolkit.exporter import DEFAULT_OPSET, ExportResult, check_opset, export_model, parity_metadata, versions
from toolkit.fileio import atomic_write_bytes, atomic_write_text
from toolkit.naming import output_origins, unique_names
from toolkit.runner import metadata_value

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
        return all(entry.result.parity for entry in self.entries)

    def manifest(self) -> dict:
        return build_manifest(self.entries)


def build_manifest(entries: Sequence[SuiteEntry]) -> dict:
    opsets = sorted({int(_metadata(e.result, "opset")) for e in entries})
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


def _metadata(result: ExportResult, key: str) -> str:
    value = metadata_value(result.model, key)
    if value is None:  # every export writes these keys
        raise KeyError(f"lstm_onnx.{key}")
    return value


def _check_keys(kind: str, keys: Sequence[str], known: Sequence[str]) -> None:
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise InputError(f"Expected {kind} among the outputs {sorted(set(known))}. Received unknown key(s): {unknown}")


def export_stacks(
    configs: Sequence[StackConfig],
    out_dir: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    output_names: Mapping[str, str] | None = None,
    tolerances: Tolerances = Tolerances(),
    keep_failed: bool = False,
    require_fused: bool = False,
    write: bool = True,
    converter: str = "lstm-onnx",
    propagate_nan: bool = False,
    state_io: bool = False,
    padding: str = "right",
) -> SuiteResult:
    """Build, export and check each config; write them and the manifest when all pass."""
    check_opset(opset)
    if not configs:
        raise InputError("Expected at least one stack configuration. Received: none")
    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        raise InputError(f"Expected an output folder. Received: {str(target)!r}, which is a file")
    models = [(config, build_stack(config)) for config in configs]
    defaults = {config.name: unique_names([o.name for o in output_origins(model)]) for config, model in models}
    every_default = [name for names in defaults.values() for name in names]
    renames = dict(output_names or {})
    _check_keys("--output-name keys", list(renames), every_default)
    final_names = {k: [renames.get(n, n) for n in v] for k, v in defaults.items()}
    _check_keys("tolerance keys", list(tolerances.per_output), [n for v in final_names.values() for n in v])

    entries = []
    for config, model in models:
        names = final_names[config.name]
        own = Tolerances(tolerances.default, {k: v for k, v in tolerances.per_output.items() if k in names})
        result = export_model(
            model, opset=opset, output_names=names, tolerances=own, seed=config.seed,
            source={"builder": config.to_json()}, require_fused=require_fused, converter=converter,
            propagate_nan=propagate_nan, state_io=state_io, padding=padding,
        )
        entries.append(SuiteEntry(config=config, file=f"{config.name}.onnx", result=result))
    suite = SuiteResult(out_dir=target, entries=entries)
    if write and (suite.passed or keep_failed):
        for entry in entries:
            suite.written.append(atomic_write_bytes(target / entry.file, entry.result.data))
        manifest_text = json.dumps(suite.manifest(), indent=2, sort_keys=False) + "\n"
        suite.written.append(atomic_write_text(target / MANIFEST_NAME, manifest_text))
    return suite


def read_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"Expected a manifest at {str(path)!r}. Received: no such file")
    return json.loads(path.read_text())
