"""Writing a set of files that belong together: all of them or none, never a mix of old and new.

A suite export writes several models and a `manifest.json` that records their hashes. Written one by one,
a full disk or a kill -9 leaves new models beside the old manifest. `write_file_set` makes the set change
at one instant of record, with a redo journal in the target folder:

1. the journal says "writing" and names every temporary file; the new files go to those temporaries,
   each next to its destination (same filesystem) and flushed to disk;
2. the journal is rewritten to say "commit": this is the switch. A failure before it leaves the old set
   untouched and removes the temporaries;
3. the temporaries are renamed over their destinations, files the new set drops are removed, and the
   journal is deleted.

Whoever next writes to the folder (`recover`) finishes a committed set, or removes the temporaries of one
that never committed. Writers hold an exclusive `flock` on the folder, so a recovery never takes the
temporaries of a writer that is still running. Every OSError becomes one `OutputError` line.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from toolkit.errors import InputError, OutputError
from toolkit.fileio import (
    TEMP_NAME,
    folder_lock,
    fsync_dir,
    remove_stale_temporaries,
    temp_for,
    unlink_quietly,
    write_error,
    write_new,
)
from toolkit.guard import safe_text

JOURNAL = ".lstm-onnx-journal.json"
_FORMAT = "lstm-onnx file set 1"


# --------------------------------------------------------------------------------------------- journal


def _relative(name: str) -> PurePosixPath:
    """A destination inside the set's folder: relative, no `..`, no empty or `.` parts."""
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise InputError(f"Expected a file name inside the output folder. Received: {safe_text(name)!r}")
    return rel


def _write_journal(folder: Path, state: str, moves: Sequence[tuple[str, str]], removes: Sequence[str]) -> None:
    text = json.dumps({"format": _FORMAT, "state": state, "moves": list(map(list, moves)), "removes": list(removes)})
    journal = folder / JOURNAL
    temp = temp_for(journal, secrets.token_hex(8))
    try:
        write_new(temp, text.encode())
        os.replace(temp, journal)
    except BaseException:
        unlink_quietly(temp)
        raise
    fsync_dir(folder)


def _read_journal(folder: Path) -> tuple[str, list[tuple[str, str]], list[str]]:
    """State, moves and removes of a journal; a damaged or foreign one reads as an empty 'writing' journal,
    so it can only ever cause our own temporaries to be removed."""
    try:
        record = json.loads((folder / JOURNAL).read_text())
        assert isinstance(record, dict) and record.get("format") == _FORMAT
        moves = [(str(temp), str(final)) for temp, final in record["moves"]]
        removes = [str(name) for name in record["removes"]]
        for temp, final in moves:
            _relative(final), _relative(temp)
            match = TEMP_NAME.match(PurePosixPath(temp).name)
            assert match and match["base"] == PurePosixPath(final).name
            assert PurePosixPath(temp).parent == PurePosixPath(final).parent
        for name in removes:
            _relative(name)
        return str(record["state"]), moves, removes
    except (OSError, ValueError, KeyError, TypeError, AssertionError, InputError):
        return "writing", [], []


@dataclass(frozen=True)
class Recovery:
    """What `recover` found of an earlier run: a committed set it finished, temporaries it removed."""

    finished: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


def recover(folder: str | os.PathLike[str]) -> Recovery:
    """Finish or undo what a killed writer left in `folder`. Call with the folder lock held."""
    root = Path(folder)
    finished: list[str] = []
    removed: list[str] = []
    if (root / JOURNAL).exists():
        state, moves, removes = _read_journal(root)
        for temp, final in moves:
            if not (root / temp).exists():
                continue
            if state == "commit":
                os.replace(root / temp, root / final)
                finished.append(final)
            else:
                unlink_quietly(root / temp)
                removed.append(temp)
        if state == "commit":
            for name in removes:
                unlink_quietly(root / name)
        fsync_dir(root)
        (root / JOURNAL).unlink()
    removed += remove_stale_temporaries(root)  # single-file writes and journal temporaries of a killed run
    return Recovery(finished=tuple(finished), removed=tuple(removed))


# ------------------------------------------------------------------------------------------- file sets


@dataclass(frozen=True)
class FileSet:
    """A set switched into place: its files, the ones it removed, and what the previous run had left."""

    folder: Path
    files: tuple[Path, ...]
    removed: tuple[Path, ...]
    recovery: Recovery


def write_file_set(folder: str | os.PathLike[str], files: Mapping[str, bytes],
                   remove: Sequence[str] | Callable[[Path], Sequence[str]] = ()) -> FileSet:
    """Write `files` (relative name -> bytes) into `folder` and drop `remove`, all or nothing. `remove` may
    be a function of the folder, called with the folder lock held: what it reads there cannot change
    under it (a suite's previous manifest)."""
    root = Path(folder)
    finals = {name: _relative(name) for name in files}
    stale: list[str] = []
    if not finals:
        raise InputError("Expected at least one file to write. Received: none")
    if root.exists() and not root.is_dir():
        raise OutputError(f"Expected an output folder. Received: {safe_text(str(root))!r}, which is a file")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with folder_lock(root) as locked:
            recovery = recover(root) if locked else Recovery()
            names = remove(root) if callable(remove) else remove
            stale = [str(_relative(name)) for name in names if name not in files]
            _switch(root, {str(rel): files[name] for name, rel in finals.items()}, stale)
    except OSError as exc:
        raise write_error(exc, getattr(exc, "filename", None) or root,
                          "the folder keeps its previous files") from None
    return FileSet(folder=root, files=tuple(root / str(rel) for rel in finals.values()),
                   removed=tuple(root / name for name in stale), recovery=recovery)


def _switch(root: Path, files: Mapping[str, bytes], stale: Sequence[str]) -> None:
    token = secrets.token_hex(8)
    moves = [(str(PurePosixPath(temp_for(Path(name), token))), name) for name in files]
    _write_journal(root, "writing", moves, stale)
    created: list[Path] = []
    try:
        for temp, final in moves:
            parent = (root / final).parent
            if not parent.is_dir():
                created.extend(p for p in reversed([parent, *parent.parents]) if p.is_relative_to(root) and not p.exists())
                parent.mkdir(parents=True, exist_ok=True)
            if (root / final).is_dir():
                raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(root / final))
            write_new(root / temp, files[final])
        for parent in {(root / final).parent for _, final in moves}:
            fsync_dir(parent)
        _write_journal(root, "commit", moves, stale)  # the switch: from here on the new set is the set
    except BaseException:
        for temp, _ in moves:
            unlink_quietly(root / temp)
        unlink_quietly(root / JOURNAL)
        for path in reversed(created):
            try:
                path.rmdir()
            except OSError:
                pass
        raise
    try:
        recover(root)
    except OSError as exc:
        raise write_error(exc, getattr(exc, "filename", None) or root,
                          "the new set is committed and the next write to this folder completes it") from None
