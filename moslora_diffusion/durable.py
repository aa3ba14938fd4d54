"""Durable file replacement: write under a temporary name, fsync the data, rename, fsync the folder.

After a power loss a file written this way is either the old one or the complete new one, never a
zero-length or partial file under the final name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["fsync_file", "fsync_dir", "fsync_tree", "replace_durably", "write_atomic"]


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (new names, renames) to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file of a folder (not recursive), then the folder itself."""
    for entry in Path(folder).iterdir():
        if entry.is_file():
            fsync_file(entry)
    fsync_dir(folder)


def replace_durably(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename a fully written (and fsynced) ``tmp`` onto ``final`` and make the rename itself durable."""
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` durably, through a temporary name unique to this call."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        replace_durably(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
