"""Byte sizes on the command line: ``123``, ``10KB``, ``1.5MiB``, ``10M``, ``1GiB``.

``KB``/``MB``/``GB``/``TB`` are powers of 1000; ``KiB``/``MiB``/``GiB``/``TiB`` and the bare
letters ``K``/``M``/``G``/``T`` are powers of 1024 (as in ``dd`` and ``ls -h``). Units are case
insensitive and may follow a space; a trailing ``B`` alone means bytes. Fractions are allowed
when they come to a whole number of bytes (``0.5KiB`` = 512, ``1.5B`` is refused).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from peerstack.errors import UsageError

MAX_SIZE = (1 << 64) - 1

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}

_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)", re.IGNORECASE | re.ASCII)


def parse_size(text: str) -> int:
    """The number of bytes ``text`` names; ``UsageError`` with a clear message otherwise."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or len(text) > 64:
        raise UsageError(f"not a size: {text!r} (try 123, 10MB, 100MiB or 1GiB)")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise UsageError(f"unknown size unit {unit!r} in {text!r} (use B, KB, KiB, MB, MiB, ...)")
    try:
        value = Decimal(number) * factor
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        raise UsageError(f"not a size: {text!r}") from None
    if value != value.to_integral_value():
        raise UsageError(f"{text!r} is not a whole number of bytes")
    result = int(value)
    if result > MAX_SIZE:
        raise UsageError(f"{text!r} is too large")
    return result


def format_size(n: int) -> str:
    """A short human form of ``n`` bytes in binary units (``1.5 MiB``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
