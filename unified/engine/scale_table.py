"""The scale table Tengine, MQBench and PPQ share: one line per tensor, `<name> <scale> <zero_point>`.

Reading is strict: a malformed line, a non-positive scale or a zero point outside the dtype's
range is a `ScaleFileError` naming the line; unknown tensor names are reported all at once.
Writing is atomic.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

from unified.core.errors import ScaleFileError
from unified.core.paths import atomic_write
from unified.core.quant_params import QuantParams


def read_scale_table(path: str | os.PathLike, qmin: int = 0, qmax: int = 255) -> dict[str, tuple[float, int]]:
    """{tensor name: (scale, zero point)} as printed; the scheme turns them into `QuantParams`."""
    p = Path(path)
    if not p.exists():
        raise ScaleFileError(f"scale file not found: {p}")
    table: dict[str, tuple[float, int]] = {}
    for lineno, raw in enumerate(p.read_text(errors="replace").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ScaleFileError(f"{p}:{lineno}: expected '<tensor_name> <scale> <zero_point>', got {line!r}")
        name, scale_text, zp_text = parts
        try:
            scale = float(scale_text)
            zero_point = int(zp_text)
        except ValueError:
            raise ScaleFileError(f"{p}:{lineno}: cannot read scale {scale_text!r} / zero point {zp_text!r}") from None
        if not scale > 0 or scale != scale or scale == float("inf"):
            raise ScaleFileError(f"{p}:{lineno}: scale of {name!r} must be a positive number, got {scale_text}")
        if not qmin <= zero_point <= qmax:
            raise ScaleFileError(f"{p}:{lineno}: zero point of {name!r} must be in [{qmin}, {qmax}], got {zero_point}")
        if name in table:
            raise ScaleFileError(f"{p}:{lineno}: tensor {name!r} is listed twice")
        table[name] = (scale, zero_point)
    if not table:
        raise ScaleFileError(f"{p}: the scale file holds no entries")
    return table


def check_names(table: dict[str, object], known: Iterable[str], source: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ScaleFileError(f"{source}: {len(unknown)} tensor name(s) are not in the model: "
                             + ", ".join(unknown[:20]) + (" ..." if len(unknown) > 20 else ""))


def write_scale_table(path: str | os.PathLike, tensors: dict[str, QuantParams],
                      format_scale: Callable[[float], str] = lambda s: f"{s:.9g}") -> None:
    with atomic_write(path) as tmp:
        tmp.write_text("".join(f"{name} {format_scale(t.scale)} {t.zero_point}\n" for name, t in tensors.items()))
