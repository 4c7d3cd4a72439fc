"""Tar archives read and extracted within size caps: no gzip bomb, long header or hostile path
gets further than one error line.

CIFAR's archives are read in place (`read_members`), never extracted, for training; `cifarkit
download --extract` unpacks them with `extract_archive`, which checks every member first.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable

from cifarkit.errors import DataError

MAX_TAR_EXTENSION_BYTES = 2**20  # a long-name or pax header record; real ones are a few hundred bytes
TAR_SLACK_BYTES = 4 * 2**20      # headers, padding and small extra members (the official readme.html)


def read_members(path: Path, wanted: dict[str, str], max_bytes: Callable[[str], int],
                 total_bytes: int) -> dict[str, bytes]:
    """{short name: bytes} of the members `wanted` names ({member path: short name}), read in one
    sequential pass without extracting anything; members not found are simply absent.

    Memory and time are bounded by what the caller says the data needs, whatever the archive
    claims: each member's declared size is checked against `max_bytes(short name)` before a byte
    of it is read, long-name and pax records are capped, and the decompressed stream as a whole
    stops at `total_bytes` plus a little slack for headers (a gzip bomb's huge or lying headers
    end in one error line, not in gigabytes of memory).
    """
    found: dict[str, bytes] = {}
    limit = total_bytes + TAR_SLACK_BYTES
    try:
        with open(path, "rb") as raw, _decompressed(raw) as stream, \
                tarfile.open(fileobj=_CappedReader(stream, limit), mode="r|", tarinfo=_BoundedTarInfo,
                             bufsize=2**20) as tar:
            for member in tar:
                member_name = member.name[2:] if member.name.startswith("./") else member.name
                name = wanted.get(member_name)
                if name is None:
                    continue
                if name in found:
                    raise DataError(f"{path}: member {member_name} appears twice in the archive")
                if not member.isreg():
                    raise DataError(f"{path}: member {member_name} is not a regular file")
                cap = max_bytes(name)
                if member.size > cap:
                    raise DataError(f"{path}: member {member_name} is {member.size} bytes, larger "
                                    f"than any CIFAR file ({cap} bytes at most for {name})")
                handle = tar.extractfile(member)
                data = handle.read(member.size) if handle is not None else b""
                if len(data) != member.size:
                    raise DataError(f"{path}: member {member_name} is truncated")
                found[name] = data
                if len(found) == len(wanted):
                    break
    except DataError:
        raise
    except _TooLarge as exc:
        raise DataError(f"{path} is not a CIFAR archive: {exc}") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise DataError(f"{path} is not a readable CIFAR archive (expected a complete "
                        f".tar.gz: {type(exc).__name__}: {exc})") from None
    return found


class _TooLarge(Exception):
    """An archive holds more than CIFAR can: refused before it is read any further."""


class _CappedReader(io.RawIOBase):
    """A read-only stream that refuses to deliver more than `limit` bytes in all."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self._stream, self._limit, self._delivered = stream, limit, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        room = self._limit - self._delivered + 1          # one byte more than allowed shows the excess
        data = self._stream.read(room if n is None or n < 0 else min(n, room))
        self._delivered += len(data)
        if self._delivered > self._limit:
            raise _TooLarge(f"it decompresses to more than {self._limit} bytes")
        return data


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses long-name and pax records of more than MAX_TAR_EXTENSION_BYTES: tarfile reads those
    into memory whole, before any member is seen."""

    def _proc_member(self, tar):
        if self.type in _EXTENSION_TYPES and self.size > MAX_TAR_EXTENSION_BYTES:
            raise _TooLarge(f"a tar header record of {self.size} bytes (at most {MAX_TAR_EXTENSION_BYTES})")
        return super()._proc_member(tar)


_EXTENSION_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                    tarfile.SOLARIS_XHDTYPE)


def _decompressed(raw: BinaryIO):
    """The archive's tar stream: gzip (the official format), bzip2, xz, or an uncompressed tar."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return contextlib.nullcontext(raw)


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike, max_bytes: int | None = None) -> Path:
    """Extract a .tar(.gz) into `dest`, refusing absolute paths, '..', links and special files,
    and (with `max_bytes`) archives whose members add up to more than that.

    Every member is checked before anything is written, so a hostile archive leaves `dest`
    untouched. Uses tarfile's "data" filter where Python has it (3.11.4+), else the same rules
    checked by hand.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*", tarinfo=_BoundedTarInfo) as tar:
            members = tar.getmembers()
            total = 0
            for member in members:
                problem = _member_problem(member, dest)
                if problem:
                    raise DataError(f"{archive}: refuses to extract member '{member.name}' ({problem})")
                total += member.size if member.isreg() else 0
                if max_bytes is not None and total > max_bytes:
                    raise DataError(f"{archive}: refuses to extract {total} bytes or more, more than a "
                                    f"CIFAR archive holds ({max_bytes} bytes at most)")
            dest.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(dest, members=members)
    except DataError:
        raise
    except _TooLarge as exc:
        raise DataError(f"{archive} cannot be extracted: {exc}") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise DataError(f"{archive} cannot be extracted ({type(exc).__name__}: {exc})") from None
    return dest


def _member_problem(member: tarfile.TarInfo, dest: Path) -> str | None:
    """Why a member is unsafe to extract, or None."""
    if hasattr(tarfile, "data_filter"):
        try:
            tarfile.data_filter(member, str(dest))
        except tarfile.FilterError as exc:
            return str(exc)
        # The data filter allows links that stay inside dest; CIFAR archives have none, so refuse.
    return _manual_member_problem(member)


def _manual_member_problem(member: tarfile.TarInfo) -> str | None:
    name = member.name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in name.split("/"):
        return "path leaves the destination"
    if member.issym() or member.islnk():
        return "links are not allowed"
    if not (member.isreg() or member.isdir()):
        return "special files are not allowed"
    return None
