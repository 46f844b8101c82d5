"""Benchmark reports: result rows saved as JSON (with where and how they were measured) and as a markdown table."""

from __future__ import annotations

import json
from pathlib import Path


def markdown_table(rows: list[dict], columns: list[str]) -> list[str]:
    """The lines of a markdown table of `rows` in `columns` (a value a row lacks is an empty cell)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(row.get(column, "")) for column in columns) + " |" for row in rows]


def save_report(output_dir: Path, name: str, meta: dict, rows: list[dict], lines: list[str]) -> str:
    """`name.json` (`{"meta": meta, "rows": rows}`) and `name.md` (`lines`) in `output_dir`; returns the markdown."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{name}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    text = "\n".join(lines) + "\n"
    (output_dir / f"{name}.md").write_text(text)
    return text
