"""``edgecompress report RUN``: re-render a run directory's report.json as report.html and a summary."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgecompress.commands import COMMANDS, Command


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory holding report.json (e.g. runs/demo)")
    p.add_argument("--html", help="where to write the HTML (default RUN/report.html)")


def _run(args: argparse.Namespace) -> tuple[dict, str]:
    from edgecompress.errors import BadInputError
    from edgecompress.report import format_summary, write_html

    source = Path(args.run) / "report.json"
    if not source.is_file():
        raise BadInputError(f"{source}: no such file (is {args.run} a run directory?)")
    try:
        report = json.loads(source.read_text())
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{source}: not valid JSON ({exc})") from None
    out = write_html(report, args.html or Path(args.run) / "report.html", title=f"edgecompress run: {args.run}")
    lines = [f"wrote {out}", "stages: " + ", ".join(report.get("stages", {}))]
    lines += format_summary(report.get("summary", {}))
    return report.get("summary", {}), "\n".join(lines)


COMMANDS.add("report", Command("report", "render a run directory's report (HTML and a summary)", _configure, _run))
