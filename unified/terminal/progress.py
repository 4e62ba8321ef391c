"""Progress of long phases (calibration, weight rounding, comparisons), drawn by rich.

On a terminal (or with `UNIFIED_PROGRESS=1`) a bar is drawn on stderr, titled with the backend
being built ("rknn: calibrating"). Otherwise nothing is drawn (logs and CI stay clean) and each
phase logs one line at INFO on the "unified" logger instead ("tengine: weight rounding 49 layers").
`UNIFIED_PROGRESS=0` switches bars off everywhere.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("unified")
_scope: contextvars.ContextVar[str] = contextvars.ContextVar("unified_progress_scope", default="")


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Title every phase started inside with `name` (the backend being built)."""
    token = _scope.set(name)
    try:
        yield
    finally:
        _scope.reset(token)


def _enabled() -> bool:
    flag = os.environ.get("UNIFIED_PROGRESS")
    if flag is not None:
        return flag not in ("0", "", "false")
    return sys.stderr.isatty()


def _title(label: str) -> str:
    owner = _scope.get()
    return f"{owner}: {label}" if owner and not label.startswith(owner) else label


def progress(items: Iterable[T], total: int | None, label: str, what: str | None = None) -> Iterator[T]:
    """Yield from `items` while a bar (or one INFO line) reports the phase.

    `what` says what is processed, for the log line ("100 images"); default: the item count.
    """
    title = _title(label)
    if not _enabled():
        log.info("%s %s", title, what if what is not None else (total if total is not None else ""))
        yield from items
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=28), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=Console(file=sys.stderr), transient=False)
    with bar:
        task = bar.add_task(title, total=total)
        for item in items:
            yield item
            bar.advance(task)
