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
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from toolkit.errors import InputError, OutputError
from toolkit.fileio import (
    JOURNAL,
    Recovery,
    folder_lock,
    fsync_dir,
    recover,
    relative_name,
    temp_for,
    unlink_quietly,
    write_error,
    write_journal,
    write_new,
)
from toolkit.text import safe_text

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
    finals = {name: relative_name(name) for name in files}
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
            stale = [str(relative_name(name)) for name in names if name not in files]
            _switch(root, {str(rel): files[name] for name, rel in finals.items()}, stale)
    except OSError as exc:
        raise write_error(exc, getattr(exc, "filename", None) or root,
                          "the folder keeps its previous files") from None
    return FileSet(folder=root, files=tuple(root / str(rel) for rel in finals.values()),
                   removed=tuple(root / name for name in stale), recovery=recovery)


def _switch(root: Path, files: Mapping[str, bytes], stale: Sequence[str]) -> None:
    token = secrets.token_hex(8)
    moves = [(str(PurePosixPath(temp_for(Path(name), token))), name) for name in files]
    write_journal(root, "writing", moves, stale)
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
        write_journal(root, "commit", moves, stale)  # the switch: from here on the new set is the set
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
