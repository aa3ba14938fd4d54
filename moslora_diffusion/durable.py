"""Durable file replacement: write under a temporary name, fsync the data, rename, fsync the folder.

After a power loss a file written this way is either the old one or the complete new one, never a
zero-length or partial file under the final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "fsync_file",
    "fsync_dir",
    "fsync_tree",
    "replace_durably",
    "temporary_beside",
    "temporary_folder_beside",
    "write_atomic",
    "write_image",
    "write_figure",
    "copy_atomic",
]


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


@contextmanager
def temporary_beside(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name next to ``path``, unique to this call: write it fully inside the block; on leaving,
    it is fsynced and renamed onto ``path`` durably (or removed if the block raised)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_file(tmp)
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def temporary_folder_beside(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder next to ``path``: fill it inside the block; on leaving, every file in it is fsynced
    and it takes the place of ``path`` (a folder already there is moved aside first and deleted after), or it
    is removed if the block raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for folder in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            fsync_tree(folder)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
        replace_durably(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_with(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    with temporary_beside(path) as tmp:
        write(tmp)
    return Path(path)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` durably, through a temporary name unique to this call."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return _write_with(path, lambda tmp: tmp.write_bytes(raw))


def write_image(path: str | os.PathLike, image: Any, **save_kwargs: Any) -> Path:
    """Save a PIL image durably; the format comes from ``path``'s suffix (``save_kwargs`` go to ``save``)."""
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(
        Path(path).suffix.lower(), "PNG"
    )
    return _write_with(path, lambda tmp: image.save(tmp, format=fmt, **save_kwargs))


def write_figure(path: str | os.PathLike, fig: Any, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure durably (format from the suffix) and close it."""
    import matplotlib.pyplot as plt

    fmt = Path(path).suffix.lstrip(".") or "png"
    try:
        return _write_with(path, lambda tmp: fig.savefig(tmp, format=fmt, **savefig_kwargs))
    finally:
        plt.close(fig)


def copy_atomic(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy a file onto ``path`` durably."""
    return _write_with(path, lambda tmp: shutil.copyfile(source, tmp))
