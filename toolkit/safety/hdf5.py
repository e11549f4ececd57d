"""An HDF5 file's objects, walked by object (never by path string) within a bound on depth and count.

Both HDF5 readers lstm-onnx has (a Keras 2 `.h5`, a `.keras` archive's `model.weights.h5`) list every
dataset's declared size before any array is read. h5py's `visititems` names each object by its full path
and looks it up again by that path, which costs depth squared: a 1.5 MB `.h5` nesting 10,000 groups took
159-268 s, a 900 KB `.keras` with 6,000 levels 31-58 s. Here each group is opened by its parent's
identifier and one link name, depth and object count are bounded before they are spent, and every object
is visited once by its address.

Links: Keras writes each group and dataset under one name, by an ordinary (hard) link. A soft link, an
external link (another file's object), or an object reached under a second name (a hard link again, or a
group linked into its own subtree) is refused: read by name, 4,000 soft links to one 1 MiB gzip dataset
made a 863 KB file cost 4.7 GB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from toolkit.errors import ModelLoadError
from toolkit.text import safe_text

MAX_DEPTH = 32
"""Levels of groups below the root. Keras 3 writes `layers/<layer>/cell/vars/0` (4), each nested model
adds 2 (`layers/<model>/layers/...`); Keras 2's `.h5` writes `model_weights/<layer>/<layer>/<cell>/kernel:0`
(4). 32 leaves room for 14 levels of nested models."""

MAX_OBJECTS = 50_000
"""Groups and datasets in one file. Keras writes 4-5 per layer with weights (the layer's group, its cell's
and `vars` groups, a dataset per weight), twice that with an optimizer's: 50,000 is 5,000 such layers, past
what `MAX_CONFIG_BYTES` of config declares in practice. The walk opens each one once: 20,000 took 1.8 s
on a 2-core machine at load 13 (about 90 us each), so the bound costs seconds, not minutes."""


@dataclass(frozen=True)
class H5Dataset:
    """One dataset as the walk found it: its path, its address (its identity, whatever name reaches
    it), declared and stored size, and whether its bytes live in another file."""

    name: str
    address: int
    declared_bytes: int
    elements: int
    stored_bytes: int
    elsewhere: bool


def _refuse(where: str, expected: str, received: str) -> ModelLoadError:
    return ModelLoadError(safe_text(f"Expected {expected}. Received: {where!r} {received}", limit=1000))


def _link_kind(group_id: Any, name: bytes) -> str:
    from h5py import h5l

    kind = group_id.links.get_info(name).type
    return {h5l.TYPE_HARD: "hard", h5l.TYPE_SOFT: "soft", h5l.TYPE_EXTERNAL: "external"}.get(kind, "user-defined")


def open_child(group_id: Any, name: bytes, path: str, where: str) -> Any:
    """The object `name` in a group, by an ordinary link only (refused: soft, external, user-defined)."""
    from h5py import h5o

    kind = _link_kind(group_id, name)
    if kind != "hard":
        raise _refuse(where, "groups and datasets each under one ordinary (hard) link, as Keras writes them",
                      f"has {'an' if kind[0] in 'aeiou' else 'a'} {kind} link at {path!r}")
    return h5o.open(group_id, name)


def walk_datasets(file: Any, where: str, max_depth: int = MAX_DEPTH,
                  max_objects: int = MAX_OBJECTS) -> dict[int, H5Dataset]:
    """Every dataset of an open `h5py.File`, by address, walked iteratively within the bounds; refuse a
    file nesting deeper, holding more objects, or reaching any object twice or through a link that is
    not an ordinary one."""
    import h5py
    from h5py import h5o

    datasets: dict[int, H5Dataset] = {}
    seen = {h5o.get_info(file.id).addr}
    stack: list[tuple[Any, str, int]] = [(file.id, "", 0)]
    while stack:
        group_id, prefix, depth = stack.pop()
        count = group_id.get_num_objs()
        if len(seen) + count > max_objects:
            raise _refuse(where, f"at most {max_objects} HDF5 groups and datasets",
                          f"holds more (past {len(seen)} when it reaches {prefix or '/'!r}, which holds {count})")
        for name in list(group_id):
            path = f"{prefix}{name.decode('utf-8', 'replace')}"
            child = open_child(group_id, name, path, where)
            info = h5o.get_info(child)
            if info.addr in seen or info.rc != 1:
                raise _refuse(where, "each HDF5 group and dataset under one name, as Keras writes them",
                              f"links {path!r} to an object linked elsewhere too (a hard link)")
            seen.add(info.addr)
            if info.type == h5o.TYPE_GROUP:
                if depth + 1 > max_depth:
                    raise _refuse(where, f"HDF5 groups nested at most {max_depth} levels deep",
                                  f"nests deeper at {path[:200]!r}")
                stack.append((child, path + "/", depth + 1))
            elif info.type == h5o.TYPE_DATASET:
                item = h5py.Dataset(child)
                datasets[info.addr] = H5Dataset(path, info.addr, item.size * item.dtype.itemsize, int(item.size),
                                                item.id.get_storage_size(), bool(item.external or item.is_virtual))
    return datasets


def resolve_dataset(group: Any, relative: str, where: str) -> tuple[Any, int] | None:
    """The dataset at `relative` (a `/`-separated path) under `group`, through ordinary links only, and
    its address; None when there is none. Every step is a link name under an open group: no path lookup
    that would follow a soft link."""
    import h5py
    from h5py import h5o

    current = group.id
    parts = [part for part in relative.split("/") if part]
    for index, part in enumerate(parts):
        name = part.encode()
        if part == "." or not isinstance(current, h5py.h5g.GroupID) or name not in current:  # "." would be the group itself
            return None
        current = open_child(current, name, "/".join(parts[:index + 1]), where)
    if not isinstance(current, h5py.h5d.DatasetID):
        return None
    return h5py.Dataset(current), h5o.get_info(current).addr
