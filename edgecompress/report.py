"""A run's report as a self-contained HTML page (no scripts, no network)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        text = json.dumps(v, default=str)
        return html.escape(text if len(text) < 240 else text[:240] + " ...")
    return html.escape(str(v))


def _table(d: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_value(v)}</td></tr>" for k, v in d.items()
                   if k != "samples_ms")
    return f"<table>{rows}</table>"


def render_html(report: dict, title: str = "edgecompress run") -> str:
    """HTML with a summary table and one section per stage (``report["stages"]``)."""
    sections = []
    for name, stage in report.get("stages", {}).items():
        body = "".join(f"<h3>{html.escape(k)}</h3>{_table(v)}" if isinstance(v, dict) else "" for k, v in stage.items())
        flat = {k: v for k, v in stage.items() if not isinstance(v, dict)}
        sections.append(f"<section><h2>{html.escape(name)}</h2>{_table(flat)}{body}</section>")
    summary = _table(report.get("summary", {}))
    style = ("body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 8px;"
             "text-align:left;font-size:13px}th{background:#f4f4f4}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1><h2>summary</h2>{summary}"
            f"{''.join(sections)}</body></html>\n")


def write_html(report: dict, path: str | Path, title: str = "edgecompress run") -> Path:
    from edgecompress.fileio import write_text_atomic

    return write_text_atomic(path, render_html(report, title))


def format_summary(summary: dict) -> list[str]:
    """One indented ``key: value`` line per summary figure (floats to 4 significant digits)."""
    return [f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}" for k, v in summary.items()]
