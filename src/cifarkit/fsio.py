"""Atomic file writes: a file either keeps its old content or has the complete new one.

Every file cifarkit writes into a run directory goes through here: write to a temporary file in
the same directory, flush and fsync it, then rename over the target (atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from cifarkit.errors import OutputError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


# Errors of the storage itself: the message must say which file could not be written.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; rename it over `path` on success only.

    An OSError of the write (a full disk, a quota, ...) names `path` in its `filename`, not the
    temporary file and not nothing, so "No space left on device" says where."""
    path = Path(path)
    tmp = None
    made = missing_folders(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        binary = "b" in mode
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            os.chmod(tmp, 0o666 & ~_UMASK)      # mkstemp makes 0600; give what open() would
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        remove_empty_folders(made)              # a failed write leaves no trace, folders included
        named = _naming_target(exc, path, tmp) if isinstance(exc, OSError) else None
        if named is not None:
            raise named from exc
        raise
    _fsync_dir(path.parent)


def _naming_target(exc: OSError, path: Path, tmp: str | None) -> OSError | None:
    """The same error pointed at the file the caller asked for; None to keep it as it is (errors of
    the caller's own reads, such as a dropped connection while downloading, keep their wording)."""
    if exc.filename is not None and exc.filename != tmp:
        return None
    if exc.filename == tmp or exc.errno in _STORAGE_ERRNOS:
        return type(exc)(exc.errno, exc.strerror, str(path))
    return None


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its ancestors that do not exist yet, deepest first."""
    missing = []
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove folders (deepest first) that are still empty: the ones a failed operation made."""
    for folder in folders:
        with contextlib.suppress(OSError):      # not empty (someone else wrote there) or already gone
            folder.rmdir()


def check_can_write(path: str | os.PathLike, *, append: bool = False) -> None:
    """Raise OutputError now if `path` could not be written later: a folder in its place, or a
    parent folder that cannot be made or written (or, to `append`, a file that cannot be opened
    for writing). Long jobs call this before they start, not after an hour of work; it probes the
    way `atomic_open` writes and leaves nothing behind."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write to {path}: it is a folder; name a file in it")
    if append and path.exists():
        if not os.access(path, os.W_OK):
            raise OutputError(f"cannot write to {path}: {os.strerror(errno.EACCES)}")
        return
    made = missing_folders(path.parent)
    nearest = made[-1].parent if made else path.parent
    if not nearest.is_dir():
        raise OutputError(f"cannot write to {path}: {nearest} is not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write to {path}: {e.strerror or e}") from None
    finally:
        remove_empty_folders(made)


def check_folder_writable(folder: str | os.PathLike) -> None:
    """Make `folder` (with its parents) and raise OutputError now if a megabyte could not be written
    and synced there: a run directory is checked before the hour of training that fills it. The
    probe file is removed whether or not the write succeeded."""
    folder = Path(folder)
    probe = folder / ".cifarkit-write-test"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 1024 * 1024)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OutputError(f"cannot write to {folder}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):      # a disk that filled up mid-probe keeps no partial file
            probe.unlink()


def _fsync_dir(directory: Path) -> None:
    # Make the rename itself durable; not every platform allows opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line. A crash can leave at most a partial last line, which readers skip."""
    line = json.dumps(record, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file, ignoring a torn last line left by a crash."""
    records = []
    p = Path(path)
    if not p.exists():
        return records
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
