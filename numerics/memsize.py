"""Byte sizes as users write them and as messages show them (no torch: the CLI's argument
parser reads --max-memory with it before the numeric stack is imported)."""

from __future__ import annotations

import math


def parse_memory(text: str | int) -> int:
    """Bytes from ``"2G"``, ``"500M"``, ``"64k"``, ``"1.5GiB"`` or a plain number of bytes
    (K/M/G/T are powers of 1024).  Raises ValueError on anything else or a size below 1 KiB
    (a bare ``2`` is more likely a forgotten suffix than a budget of two bytes)."""
    if isinstance(text, int):
        value = text
    else:
        t = str(text).strip().lower().removesuffix("b").removesuffix("i")
        mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}.get(t[-1:], 1)
        num = t[:-1] if t[-1:] in "kmgt" and t else t
        try:
            f = float(num)
        except ValueError:
            raise ValueError(f"memory size {text!r}: expected a number with an optional K, M, G or T suffix, e.g. 2G or 500M") from None
        if not math.isfinite(f) or f <= 0:
            raise ValueError(f"memory size {text!r} must be a positive number")
        value = int(f * mult)
    if value < 1 << 10:
        raise ValueError(f"memory size {text!r} is below 1 KiB (a missing K, M or G?)")
    return value


def format_bytes(n: float) -> str:
    """A byte count for messages: 1.5 GiB, 300 MiB, ..."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"
