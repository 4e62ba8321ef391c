"""Where `unified` keeps its cache (XDG), and writing files so that none is ever left half-written."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def existing_file(path: str | os.PathLike, kind: str, error: type[Exception]) -> Path:
    """`path` as a Path if it is an existing file; else `error` saying it is missing or a folder."""
    p = Path(path)
    if not p.exists():
        raise error(f"{kind} file not found: {p}")
    if p.is_dir():
        raise error(f"expected {'an' if kind[0] in 'aeiou.' else 'a'} {kind} file, got a directory: {p}")
    return p


def cache_dir() -> Path:
    """`$UNIFIED_CACHE_DIR`, else `$XDG_CACHE_HOME/unified`, else `~/.cache/unified`."""
    explicit = os.environ.get("UNIFIED_CACHE_DIR")
    if explicit:
        base = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "unified"
    base.mkdir(parents=True, exist_ok=True)
    return base


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    A crash, an exception or a Ctrl-C leaves the destination untouched and removes the temporary.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
