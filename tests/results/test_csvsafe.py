"""Issue 14 row 4: one CSV writer, no formula survives, a bare CR cannot split a row."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from memgauge.results.csvsafe import csv_text, frame_csv, neutralise

EVIL = [
    '=HYPERLINK("x")',
    "+1",
    "-cmd",
    "@SUM(A1)",
    "\t=1",
    "\r=1",
    "x\r=cmd|' -C calc'!A0",
    "x\n=cmd|' -C calc'!A0",
    "x\r\n@cmd",
    'a,"b"',
]


@pytest.mark.parametrize("value", EVIL)
def test_every_dangerous_text_cell_is_neutralised_and_the_row_stays_one_row(value):
    text = csv_text(["model", "peak"], [[value, -3], ["llama", 4.5]])
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows == [
        ["model", "peak"],
        ["'" + value if value[0] != "a" else value, "-3"],
        ["llama", "4.5"],
    ]
    if "\r" in value or "\n" in value:  # quoted: a CR or LF stays inside its cell
        assert '"' + "'" + value + '"' in text


def test_numbers_and_missing_values():
    df = pd.DataFrame({"a": [1, None], "b": [-2.5, float("nan")], "c": ["x", None]})
    df["a"] = df["a"].astype("Int64")
    assert frame_csv(df) == "a,b,c\n1,-2.5,x\n,,\n"
    assert neutralise(-1) == -1 and neutralise("llama") == "llama"


def test_a_report_and_the_dashboard_download_use_this_writer():
    """Both call sites go through csvsafe (one writer, not two that drift apart)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "memgauge"
    sources = {
        p: p.read_text()
        for p in [*root.rglob("*.py")]
        if "to_csv(" in p.read_text() or "csv.writer(" in p.read_text()
    }
    assert not sources, f"CSV written outside memgauge/results/csvsafe.py: {list(sources)}"
    users = [p for p in root.rglob("*.py") if "frame_csv" in p.read_text()]
    assert any("app" in p.parts for p in users) and any("report" in str(p) for p in users)


def test_a_report_csv_with_a_bare_cr_in_a_label_keeps_one_row_per_result(tmp_path):
    from memgauge.results.report import write_csv

    evil = "x\r=cmd|' -C calc'!A0"
    path = tmp_path / "r.csv"
    write_csv([{"model": evil, "peak_allocated": 5}, {"model": "llama", "peak_allocated": 6}], path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["model", "peak_allocated"], ["'" + evil, "5"], ["llama", "6"]]
