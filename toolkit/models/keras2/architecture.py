"""A weights-only `.h5`'s architecture file, the other half of the pair Keras 1 and 2 tutorials published:
`model.to_json()` (`.json`) or `model.to_yaml()` (`.yml`, `.yaml`), read within bounds into the model config
the `.h5` reader pairs with the weights. Nothing in the file runs.

Keras 1 and 2's `to_yaml` was `yaml.dump(model._updated_config())`, so its shapes come out as
`!!python/tuple` (and, written by Python 2, its strings as `!!python/unicode`); Keras' own `model_from_yaml`
read them back with `yaml.load`, which builds any Python object a tag names
(`!!python/object/apply:os.system` runs a command). Here a `yaml.SafeLoader` that adds those few tags
as plain data (a tuple as a list, as `to_json` wrote it) reads the file, and every other tag is refused
before anything is built; aliases are expanded within a bound.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit.errors import ModelLoadError
from toolkit.options import ResourceLimits
from toolkit.safety.files import open_regular_file
from toolkit.text import safe_text

YAML_SUFFIXES = (".yml", ".yaml")
ARCHITECTURE_SUFFIXES = (".json", *YAML_SUFFIXES)
_MAX_DEPTH = 64  # a Keras config nests a few levels (model, layer, wrapped layer, initializer, its config)
# A YAML file's own bound, below the config bound: building Python values from YAML is slow (libyaml's parser:
# 0.8 s for 0.5 MB of numbers; PyYAML's pure-Python one 4.7 s), and Keras' to_yaml files are kilobytes.
_MAX_YAML_BYTES = 4 * 1024 * 1024
_WHAT = {"json": "an architecture JSON (model.to_json())", "yaml": "an architecture YAML (model.to_yaml())"}


def architecture_kind(path: Path) -> str:
    """'yaml' for a `to_yaml()` file (`.yml`, `.yaml`), else 'json'."""
    return "yaml" if path.suffix.lower() in YAML_SUFFIXES else "json"


def read_architecture(path: Path, limits: ResourceLimits) -> dict:
    """The model config in an architecture file, read within `limits.max_config_bytes`; refused in one line
    unless it holds a Keras model config (`class_name`, `config`) written by Keras 1 or 2."""
    kind = architecture_kind(path)
    most = min(limits.max_config_bytes, _MAX_YAML_BYTES) if kind == "yaml" else limits.max_config_bytes
    with open_regular_file(path, _WHAT[kind]) as handle:
        data = handle.read(most + 1)
    if len(data) > most:
        raise ModelLoadError(f"Expected {_WHAT[kind]} of at most {most} bytes. "
                             f"Received: {safe_text(str(path))!r} is larger")
    text = data.decode("utf-8", "replace")
    config = _yaml(text, path, limits) if kind == "yaml" else config_json(text, str(path))
    if not isinstance(config.get("class_name"), str) or "config" not in config:
        raise ModelLoadError(f"Expected {_WHAT[kind]} holding a Keras model config (class_name, config). Received: "
                             f"{safe_text(str(path))!r} with keys {safe_text(', '.join(map(str, list(config)[:6])))}")
    if str(config.get("keras_version", "")).startswith("3."):  # Keras 3 weights files are another layout
        raise ModelLoadError(f"Expected {_WHAT[kind]} written by Keras 1 or 2. Received: {safe_text(str(path))!r} "
                             f"from Keras {safe_text(str(config['keras_version']))} "
                             "(export its .keras file instead: model.save('model.keras'))")
    return config


def config_json(text: str, path: str) -> dict:
    """A model config held as JSON text (an `.h5`'s `model_config`, an architecture JSON): a JSON object."""
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ModelLoadError(f"Expected model_config holding JSON. Received: {safe_text(path)!r} "
                             f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"Expected model_config holding a JSON object. Received: {safe_text(path)!r} with "
                             f"a {type(config).__name__}")
    return config


def _yaml(text: str, path: Path, limits: ResourceLimits) -> dict:
    """The config in a `to_yaml()` file. The tutorials' own form, `f.write(yaml.dump(model.to_yaml()))`,
    holds that YAML as one string: it is read once more (once only)."""
    value = _safe_yaml(text, path)
    if isinstance(value, str):
        value = _safe_yaml(value, path)
    if not isinstance(value, dict):
        raise ModelLoadError(f"Expected {_WHAT['yaml']} holding a Keras model config (a mapping). Received: "
                             f"{safe_text(str(path))!r} holding a {type(value).__name__}")
    _check_expanded(value, path, limits)
    return value


def _safe_yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass: data tags only
    except yaml.constructor.ConstructorError as exc:
        where = f" (line {exc.problem_mark.line + 1})" if exc.problem_mark is not None else ""
        raise ModelLoadError(f"Expected {_WHAT['yaml']} holding plain data (and !!python/tuple, as Keras 2 wrote "
                             f"shapes). Received: {safe_text(str(path))!r} with {safe_text(_tag(exc))}{where}: "
                             "refused before anything was built") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ModelLoadError(f"Expected {_WHAT['yaml']}. Received: {safe_text(str(path))!r} "
                             f"({type(exc).__name__}: {safe_text(str(exc).splitlines()[0][:120])})") from None


def _tag(exc: Any) -> str:
    """The refused tag as the file wrote it (`!!python/object/apply:os.system`), from PyYAML's message."""
    problem = str(exc.problem or "")
    if "'" in problem:
        tag = problem.split("'")[1]
        return "the tag " + ("!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag)
    return problem[:120] or "a tag it cannot read"


_LOADER: Any = None


def _loader() -> Any:
    """`yaml.SafeLoader` (libyaml's where PyYAML has it) with Keras 2's Python tags as data: tuple (as a
    list), unicode and str (as str); merge keys (`<<`) refused: Keras never wrote one, and PyYAML before 6.0.4
    copied merged pairs without removing repeats, so nested merges of one anchor grew tenfold a level (a
    445-byte file: 1.2 s and 70 MB at 6 levels, hours at 9)."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class KerasConfigLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
            def flatten_mapping(self, node: Any) -> None:
                for key, _ in node.value:
                    if key.tag == "tag:yaml.org,2002:merge":
                        raise yaml.constructor.ConstructorError(
                            None, None, "a merge key << (Keras never wrote one)", key.start_mark)

        prefix = "tag:yaml.org,2002:python/"
        KerasConfigLoader.add_constructor(prefix + "tuple", lambda loader, node: loader.construct_sequence(node))
        for name in ("unicode", "str"):  # Python 2's yaml.dump tagged its unicode strings
            KerasConfigLoader.add_constructor(prefix + name, lambda loader, node: loader.construct_scalar(node))
        _LOADER = KerasConfigLoader
    return _LOADER


def _check_expanded(value: Any, path: Path, limits: ResourceLimits) -> None:
    """YAML aliases share one object among many places: a few bytes can stand for a tree too large to walk
    (or one that holds itself). Its values are counted as expanded, within the bytes' bound, depth first."""
    budget, stack = limits.max_config_bytes // 2, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        budget -= 1
        if budget < 0 or depth > _MAX_DEPTH:
            raise ModelLoadError(f"Expected {_WHAT['yaml']} of at most {limits.max_config_bytes // 2} values and "
                                 f"{_MAX_DEPTH} levels once its aliases are expanded. Received: "
                                 f"{safe_text(str(path))!r} holding more")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
