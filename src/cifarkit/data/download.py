"""Fetching an archive over HTTPS: streamed to a temporary file, MD5-checked, renamed into place.

A failed download leaves nothing behind: no partial file, and no folder it had to create.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from cifarkit.errors import DataError
from cifarkit.fsio import atomic_open, missing_folders, remove_empty_folders

Log = Callable[[str], object]


def download_archive(url: str, dest: str | os.PathLike, md5: str, *, log: Log = print,
                     timeout: float = 60.0) -> Path:
    """Fetch `url` (HTTPS only) into `dest`: stream to a temporary sibling, check the MD5, rename.

    `dest` never holds a partial or unverified file. Progress goes to a tqdm bar when stdout is
    a terminal (and tqdm is installed), else to a `log` line every ~10%.
    """
    dest = Path(dest)
    if urllib.parse.urlparse(url).scheme != "https":
        raise DataError(f"refusing to download {url}: only https:// URLs are allowed")
    made = missing_folders(dest.parent)
    try:
        _download(url, dest, md5, log=log, timeout=timeout)
    except BaseException:
        remove_empty_folders(made)      # a failed download leaves no trace, not even its folders
        raise
    log(f"downloaded {url} to {dest} (MD5 ok)")
    return dest


def _download(url: str, dest: Path, md5: str, *, log: Log, timeout: float) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {dest.parent} for the download ({exc.strerror or exc}); "
                        "pass a writable --data-dir") from None
    if not os.access(dest.parent, os.W_OK):
        raise DataError(f"cannot write the download into {dest.parent}; pass a writable --data-dir")
    hint = "; download it yourself and pass --data-dir pointing at the archive or its folder"
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"could not download {url} ({reason}){hint}") from None
    with response:
        final_url = response.geturl() if hasattr(response, "geturl") else url
        if urllib.parse.urlparse(final_url).scheme != "https":
            raise DataError(f"refusing to download {url}: it redirects to the non-https {final_url}")
        length = str(response.headers.get("Content-Length") or "0")
        total = int(length) if length.isdigit() else 0          # unknown or garbled: no percentages
        digest = hashlib.md5(usedforsecurity=False)
        progress = _Progress(total, dest.name, log)
        try:
            with atomic_open(dest, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    progress.update(len(chunk))
                if digest.hexdigest() != md5:
                    raise DataError(f"the download of {url} is corrupt (MD5 {digest.hexdigest()} "
                                    f"instead of {md5}){hint}")
        except (OSError, http.client.HTTPException) as exc:
            raise DataError(f"could not download {url} ({type(exc).__name__}: {exc}){hint}") from None
        finally:
            progress.close()


class _Progress:
    """A tqdm bar on a terminal, else a log line every ~10% (or every 16 MiB if the size is unknown)."""

    def __init__(self, total: int, label: str, log: Log) -> None:
        self.total, self.label, self.log = total, label, log
        self.done, self.next_report = 0, 0.1
        self.bar = None
        if sys.stdout.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=label)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.total:
            while self.done >= self.next_report * self.total and self.next_report <= 1.0:
                self.log(f"{self.label}: {round(self.next_report * 100)}% "
                         f"({self.done / 2**20:.1f} of {self.total / 2**20:.1f} MiB)")
                self.next_report = round(self.next_report + 0.1, 1)
        elif self.done // (16 * 2**20) != (self.done - n) // (16 * 2**20):
            self.log(f"{self.label}: {self.done / 2**20:.0f} MiB")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
