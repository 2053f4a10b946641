"""Tables as text: the one formatter for every Markdown and terminal table cxrflow writes.

Built on ``tabulate``. Two forms:

- ``"markdown"``: GitHub pipe tables in their compact form, ``| a | b |`` then ``|---|---|``,
  cells unpadded. Tests, the docs and the reports compare rows as literal strings
  (``"| model_1 | accuracy |" in md``), so a cell never depends on its neighbours' widths.
  A ``|`` in a cell is escaped and a newline becomes a space, so that one row stays one line.
- ``"plain"``: aligned columns two spaces apart under one header line, for terminals.

Both return the text without a trailing newline; callers join it into their documents.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

__all__ = ["Align", "TableFmt", "format_table"]

TableFmt = Literal["markdown", "plain"]
Align = Literal["left", "right", "center"]


@functools.cache
def _markdown_format() -> Any:
    """tabulate's "github" format pads every cell to its column's width and draws the rule to
    match; the compact form keeps cells as they are and a three-dash rule per column. (Built on
    first use: importing tabulate costs 0.1 s, and the CLI imports this module for --help.)"""
    from tabulate import DataRow, TableFormat

    return TableFormat(
        lineabove=None,
        linebelowheader=lambda widths, _aligns: "|" + "---|" * len(widths),
        linebetweenrows=None,
        linebelow=None,
        headerrow=DataRow("|", "|", "|"),
        datarow=DataRow("|", "|", "|"),
        padding=1,
        with_header_hide=None,
    )


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _md_cell(value: object) -> str:
    return _text(value).replace("|", "\\|").replace("\n", " ")


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    fmt: TableFmt = "markdown",
    *,
    align: Sequence[Align] | None = None,
) -> str:
    """Format a table as Markdown or as aligned plain text.

    Cells are shown as ``str(value)`` (``None`` as an empty cell): format numbers before
    passing them, so that every table decides its own digits. A row shorter than the header
    is padded with empty cells.

    Args:
        header: Column titles.
        rows: One sequence of cells per row.
        fmt: ``"markdown"`` for a compact GitHub pipe table (``| a | b |`` / ``|---|---|``),
            ``"plain"`` for columns aligned with spaces, for a terminal.
        align: Per-column alignment in the ``"plain"`` form (default: all left); Markdown
            cells are never padded, so it is ignored there.

    Returns:
        The table, lines joined by ``\\n``, with no trailing newline.

    Raises:
        ValueError: A row has more cells than the header, or ``fmt`` is unknown.
    """
    from tabulate import tabulate

    width = len(header)
    if any(len(r) > width for r in rows):
        raise ValueError(f"a row has more cells than the {width} header columns")
    if fmt == "markdown":
        body = [[_md_cell(c) for c in r] + [""] * (width - len(r)) for r in rows]
        return tabulate(
            body,
            headers=[_md_cell(h) for h in header],
            tablefmt=_markdown_format(),
            disable_numparse=True,
            stralign=None,
            numalign=None,
        )
    if fmt == "plain":
        body = [[_text(c) for c in r] + [""] * (width - len(r)) for r in rows]
        text = tabulate(
            body,
            headers=list(header),
            tablefmt="simple",
            disable_numparse=True,
            colalign=list(align) if align else ["left"] * width,
        )
        return "\n".join(line.rstrip() for line in text.splitlines())
    raise ValueError(f"unknown table format {fmt!r}: use 'markdown' or 'plain'")


def interval_text(block: Mapping[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    """``value [low, high]`` of an estimate ``{"value", "ci_low", "ci_high"}``, times
    ``scale`` (percent by default); the value alone without bounds, ``n/a`` without a value."""
    if not block or block.get("value") is None:
        return "n/a"
    v = float(block["value"]) * scale
    lo, hi = block.get("ci_low"), block.get("ci_high")
    if lo is None or hi is None:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{float(lo) * scale:.{digits}f}, {float(hi) * scale:.{digits}f}]"
