"""The one table formatter (:func:`cxrflow.tables.format_table`): compact GitHub pipe tables
whose rows tests and docs compare as strings, and aligned columns for terminals."""

from __future__ import annotations

import pytest

from cxrflow.tables import format_table


def test_markdown_is_compact_pipe_form() -> None:
    text = format_table(["model", "dataset", "n"], [["model_0", "d", 12], ["model_12", None]])
    assert text.splitlines() == [
        "| model | dataset | n |",
        "|---|---|---|",
        "| model_0 | d | 12 |",  # no padding to the column width
        "| model_12 |  |  |",  # None and missing cells are empty
    ]
    assert not text.endswith("\n")


def test_markdown_escapes_pipes_and_newlines() -> None:
    text = format_table(["a|b"], [["x | y\nz"]])
    assert text.splitlines() == ["| a\\|b |", "|---|", "| x \\| y z |"]


def test_markdown_keeps_numbers_as_given() -> None:
    # tabulate would parse "1.50" as a number and print 1.5: the caller chose its digits
    assert "| 1.50 | 007 |" in format_table(["a", "b"], [["1.50", "007"]])


def test_plain_aligns_columns_without_trailing_space() -> None:
    text = format_table(["path", "p"], [["a.png", "0.5000"], ["long/b.png", "1.0000"]], "plain")
    lines = text.splitlines()
    assert lines[0].split() == ["path", "p"] and set(lines[1]) <= {"-", " "}
    assert lines[2].index("0.5000") == lines[3].index("1.0000")
    assert all(line == line.rstrip() for line in lines)
    right = format_table(["n"], [["1"], ["100"]], "plain", align=["right"])
    assert right.splitlines()[2] == "  1"


def test_errors() -> None:
    with pytest.raises(ValueError, match="more cells"):
        format_table(["a"], [["1", "2"]])
    with pytest.raises(ValueError, match="unknown table format"):
        format_table(["a"], [], "html")  # type: ignore[arg-type]
