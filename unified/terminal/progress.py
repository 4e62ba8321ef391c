"""A dependency-free progress bar for calibration and long comparisons.

It draws on stderr only when stderr is a terminal (or `UNIFIED_PROGRESS=1`), so logs and CI output
stay clean.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def _enabled() -> bool:
    flag = os.environ.get("UNIFIED_PROGRESS")
    if flag is not None:
        return flag not in ("0", "", "false")
    return sys.stderr.isatty()


def progress(items: Iterable[T], total: int | None, label: str, width: int = 28) -> Iterator[T]:
    """Yield from `items`, redrawing `label [#####.....] i/total  elapsed` as it goes."""
    if not _enabled():
        yield from items
        return
    start = time.perf_counter()
    count = 0

    def draw(final: bool = False) -> None:
        elapsed = time.perf_counter() - start
        if total:
            filled = int(width * count / total)
            bar = "#" * filled + "." * (width - filled)
            line = f"\r{label} [{bar}] {count}/{total} {elapsed:5.1f}s"
        else:
            line = f"\r{label} {count} {elapsed:5.1f}s"
        sys.stderr.write(line + ("\n" if final else ""))
        sys.stderr.flush()

    for item in items:
        yield item
        count += 1
        draw()
    draw(final=True)
