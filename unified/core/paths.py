"""Where `unified` keeps its cache (XDG), and writing files so that none is ever left half-written."""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
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


#: a partial file older than this is an orphan of a killed writer, safe to remove
ORPHAN_AGE_SECONDS = 3600


def _creation_mode(dest: Path) -> int:
    """The mode a plain `open(dest, "w")` would give: the existing file's, else 0o666 minus umask."""
    if dest.exists():
        return dest.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_orphans(dest: Path) -> None:
    """Partials of the same target left by a killed process (a writer still at work keeps its own):
    the writer's pid is in the name; without one, an hour-old partial counts as orphaned."""
    now = time.time()
    for orphan in dest.parent.glob(f".{dest.name}.*.partial"):
        pid_text = orphan.name[len(dest.name) + 2:].split(".", 1)[0]
        try:
            if pid_text.isdigit():
                stale = int(pid_text) != os.getpid() and not _writer_alive(int(pid_text))
            else:
                stale = now - orphan.stat().st_mtime > ORPHAN_AGE_SECONDS
            if stale:
                orphan.unlink()
        except OSError:
            pass


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    A crash, an exception or a Ctrl-C leaves the destination untouched and removes the temporary;
    the file gets the mode a plain write would (the umask, or the existing file's mode), and
    partials of the same target orphaned by a killed process are cleaned on the next write.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(dest)
    mode = _creation_mode(dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
