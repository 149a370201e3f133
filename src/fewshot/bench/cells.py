"""Markdown cells of the benchmark report: durations, sizes, ratios, one-line text, tables.
A missing value prints as `-`."""

from __future__ import annotations


def ms(seconds: float | None) -> str:
    """Seconds as milliseconds, one decimal."""
    return "-" if seconds is None else f"{1e3 * seconds:.1f} ms"


def mb(nbytes: float | None) -> str:
    """Bytes as whole megabytes."""
    return "-" if not nbytes else f"{nbytes / 1e6:,.0f} MB"


def x(value: float | None) -> str:
    """A ratio: `4.70x`, `12.3x`."""
    return "-" if value is None else f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def num(value: float | None, digits: int = 1) -> str:
    """A number with thousands separators."""
    return "-" if value is None else f"{value:,.{digits}f}"


def oneline(text: object, limit: int = 200) -> str:
    """Text fit for a table cell or a list item: one line, no pipes, at most `limit` chars."""
    flat = " ".join(str(text).split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table, line by line."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines
