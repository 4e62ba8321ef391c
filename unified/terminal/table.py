"""Tables that fit a terminal, rendered by rich as plain text (no colour codes in pipes or files)."""
from __future__ import annotations

import io
import shutil
from typing import Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], width: int | None = None) -> str:
    """`headers` over `rows`; numbers right-aligned, floats with 4 decimals, at most `width` columns."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    cells = [[_fmt(c) for c in row] for row in rows]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, header in enumerate(headers):
        numeric = i > 0 and bool(cells) and all(_numeric(row[i]) for row in cells if i < len(row))
        table.add_column(str(header), justify="right" if numeric else "left", overflow="fold")
    for row in cells:
        table.add_row(*row)
    out = io.StringIO()
    width = width or shutil.get_terminal_size((120, 24)).columns
    Console(file=out, width=width, color_system=None, force_terminal=False, highlight=False).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines() if line.strip())


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _numeric(text: str) -> bool:
    try:
        float(text.rstrip("%x"))
        return True
    except ValueError:
        return False
