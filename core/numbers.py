"""Numbers written as text (CSV cells), read the same way by the API and the CLI."""

from __future__ import annotations


def plain(text: str) -> bool:
    """Python's float() (and NumPy's) also reads 1_000 and digits of other scripts (١٢, １２);
    no CSV writer means a number by them, so such a cell is not one."""
    return text.isascii() and "_" not in text
