"""Benchmark reports: JSON with the measurement's metadata, and a markdown table."""

import json

from hf_vltprune.report import markdown_table, save_report


def test_a_row_without_a_column_gets_an_empty_cell():
    table = markdown_table([{"method": "tome", "gflops": 0.5}, {"method": "unpruned"}], ["method", "gflops"])
    assert table == ["| method | gflops |", "|---|---|", "| tome | 0.5 |", "| unpruned |  |"]


def test_save_report_writes_the_rows_with_their_metadata_and_the_table(tmp_path):
    rows = [{"method": "tome", "gflops": 0.5}]
    lines = ["title", "", *markdown_table(rows, ["method", "gflops"])]
    text = save_report(tmp_path / "out", "speed", {"machine": "cpu"}, rows, lines)
    assert json.loads((tmp_path / "out" / "speed.json").read_text()) == {"meta": {"machine": "cpu"}, "rows": rows}
    assert (tmp_path / "out" / "speed.md").read_text() == text == "\n".join(lines) + "\n"
