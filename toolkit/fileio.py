"""Writing files whole or not at all.

A converter runs in CI pipelines and is interrupted: a half-written `.onnx` that loads as garbage later
is worse than no file. Everything lstm-onnx writes goes through `atomic_output` (or `atomic_write_bytes`
on top of it): the bytes go to a temporary file in the destination folder (same filesystem, so the rename
is atomic) and replace the destination only once they are complete and flushed. Sets of files that belong
together (a suite and its manifest) go through `toolkit.export.fileset`, which builds on the helpers here.

Temporaries are named `.NAME.lstm-onnx-<16 hex>.tmp` and written while holding an exclusive `flock` on
their folder, so the next writer can tell a killed run's leftovers from a live writer's files and remove
them (`recover`, which also finishes or undoes a file set from its journal). Other leftovers of a killed
run carry its pid in their names (a browser profile, a model copy, a serve workspace): `remove_stale`
removes those whose owner no longer runs. Every OSError becomes one `OutputError` line.
Files are created with mode `0o666 & ~umask`, as a plain `open()` would, so a Triton container running as
another user can read a model repository written under the default umask.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np

from toolkit.errors import InputError, OutputError
from toolkit.text import safe_text

try:  # POSIX only; without it concurrent writers are not serialized, but each write stays whole
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

MARK = ".lstm-onnx-"
TEMP_NAME = re.compile(r"^\.(?P<base>.+)\.lstm-onnx-[0-9a-f]{16}\.tmp$")


def write_error(exc: OSError, path: str | os.PathLike[str], outcome: str = "nothing was changed") -> OutputError:
    """One line for a failed write: where, the system's reason and its errno name, and what was left."""
    code = errno.errorcode.get(exc.errno or 0, "")
    reason = f"{exc.strerror or exc}" + (f" ({code})" if code else "")
    return OutputError(f"Expected a writable destination. Received: {safe_text(os.fspath(path))!r}: "
                       f"{safe_text(reason)}; {outcome}")


def temp_for(final: Path, token: str) -> Path:
    return final.with_name(f".{final.name}{MARK}{token}.tmp")


def fsync_dir(folder: Path) -> None:
    """Make renames in `folder` durable; filesystems that cannot fsync a folder are left as they are."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until every byte is out (a write may be short); the one place file bytes are written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_new(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist), write `data` and flush it to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def folder_lock(folder: Path) -> Iterator[bool]:
    """An exclusive flock on the folder itself for as long as temporaries of ours exist in it; yields
    whether it holds the lock. Where a folder cannot be opened or locked (some network filesystems,
    Windows), writes go on unserialized: each stays whole, but no killed run's temporaries are removed."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield False
        return
    locked = False
    try:
        if fcntl is not None:
            with contextlib.suppress(OSError):  # ENOLCK, EOPNOTSUPP: no lock, the write itself still works
                fcntl.flock(fd, fcntl.LOCK_EX)
                locked = True
        yield locked
    finally:
        os.close(fd)  # closing releases the lock


def remove_stale_temporaries(folder: Path, base: str | None = None) -> list[str]:
    """Our temporaries in `folder` (of the file `base` only, if given): with the folder lock held, they
    are a killed writer's leftovers. Returns their names."""
    removed = []
    for entry in os.scandir(folder):
        match = TEMP_NAME.match(entry.name)
        if match and (base is None or match["base"] == base) and entry.is_file(follow_symlinks=False):
            unlink_quietly(Path(entry.path))
            removed.append(entry.name)
    return removed


def unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


JOURNAL = ".lstm-onnx-journal.json"
_FORMAT = "lstm-onnx file set 1"


# ------------------------------------------- the journal of a file set (`toolkit.export.fileset`), and its recovery


def relative_name(name: str) -> PurePosixPath:
    """A destination inside the set's folder: relative, no `..`, no empty or `.` parts."""
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise InputError(f"Expected a file name inside the output folder. Received: {safe_text(name)!r}")
    return rel


def write_journal(folder: Path, state: str, moves: Sequence[tuple[str, str]], removes: Sequence[str]) -> None:
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


def read_journal(folder: Path) -> tuple[str, list[tuple[str, str]], list[str]]:
    """State, moves and removes of a journal; a damaged or foreign one reads as an empty 'writing' journal,
    so it can only ever cause our own temporaries to be removed."""
    try:
        record = json.loads((folder / JOURNAL).read_text())
        assert isinstance(record, dict) and record.get("format") == _FORMAT
        moves = [(str(temp), str(final)) for temp, final in record["moves"]]
        removes = [str(name) for name in record["removes"]]
        for temp, final in moves:
            relative_name(final), relative_name(temp)
            match = TEMP_NAME.match(PurePosixPath(temp).name)
            assert match and match["base"] == PurePosixPath(final).name
            assert PurePosixPath(temp).parent == PurePosixPath(final).parent
        for name in removes:
            relative_name(name)
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
        state, moves, removes = read_journal(root)
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


def finish_pending_switch(folder: Path) -> None:
    """With the folder lock held: finish (or undo) a file set a killed writer left in `folder`, and remove
    every leftover temporary, before anything else is written there. A single file written beside a
    half-switched suite would otherwise leave the folder mixed until the next suite export."""
    recover(folder)


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A file handle whose bytes replace `path` only when the block ends without an exception."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"Expected a file path to write. Received: {safe_text(str(target))!r}, which is a folder")
    temp = temp_for(target, secrets.token_hex(8))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with folder_lock(target.parent) as locked:
            if locked:
                finish_pending_switch(target.parent)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                with os.fdopen(fd, "wb") as handle:
                    yield handle
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, target)
            except BaseException:
                unlink_quietly(temp)
                raise
        fsync_dir(target.parent)
    except OSError as exc:
        raise write_error(exc, target) from None



def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically; return the path written."""
    with atomic_output(path) as handle:
        write_all(handle.fileno(), data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write `arrays` as an `.npz` that `np.load` reads back under the same names, whatever they are.

    `np.savez(path, **arrays)` takes an output named `allow_pickle` or `file` as its own keyword (one is
    silently dropped, the other raises), so the archive is built here: one `NAME.npy` member per array.
    """
    try:
        with atomic_output(path) as handle:
            with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for name, array in arrays.items():
                    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    except InputError:  # OutputError from the destination: already one line
        raise
    except UnicodeEncodeError:
        raise InputError("Expected output names that can be written as UTF-8. Received: "
                         f"{[safe_text(n) for n in arrays]}") from None
    except ValueError as exc:  # an object array: written only with pickle, which lstm-onnx never does
        raise InputError(f"Expected numeric outputs to write. Received: {safe_text(str(exc))}") from None
    return Path(path)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (another user's process counts as running: we may not signal it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_pid(name: str, prefix: str) -> int | None:
    """The pid in `<prefix><pid>-<rest>`, or None for a name of another form."""
    pid, dash, _ = name.removeprefix(prefix).partition("-") if name.startswith(prefix) else ("", "", "")
    return int(pid) if dash and pid.isdigit() else None


def remove_stale(entries: Iterable[tuple[Path, str]]) -> list[Path]:
    """Remove each `(path, prefix)` named `<prefix><owner pid>-...` whose owner no longer runs: what a
    killed run (SIGKILL, no `stop`) left behind. Only this user's; never this process's own."""
    removed = []
    for entry, prefix in entries:
        pid = owner_pid(entry.name, prefix)
        try:
            mine = entry.lstat().st_uid == os.getuid()
        except OSError:  # removed meanwhile (its owner's `stop`, another run's cleanup)
            continue
        if pid is None or not mine or pid == os.getpid() or process_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
