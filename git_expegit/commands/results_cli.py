"""git expegit results: the results table (git_expegit/results.py), as table, csv or json."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

from git_expegit import campaign
from git_expegit import results as data
from git_expegit.commands.output import warn
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError

FORMATS = ("table", "csv", "json")
_WARNINGS = 10  # the first few say what is wrong; thousands would hide the table
_WIDEST = 40  # a cell wider than this is cut in the terminal table (csv and json keep it)


def results(cwd: Path, form: str) -> int:
    if form not in FORMATS:
        raise ExpegitError(f"unknown format {form!r}: use table, csv or json", ExitCode.USAGE)
    found = data.table(campaign.find(cwd))
    for message in found.warnings[:_WARNINGS]:
        warn(message)
    if len(found.warnings) > _WARNINGS:
        warn(f"... and {len(found.warnings) - _WARNINGS} more result files skipped")
    if form == "json":
        json.dump(found.records(), sys.stdout)
        sys.stdout.write("\n")
    elif form == "csv":
        _csv(found)
    else:
        _table(found)
    sys.stdout.flush()
    return 0


def _csv(found: data.Table) -> None:
    """RFC 4180: a header row, CRLF line ends, quotes where needed."""
    writer = csv.writer(sys.stdout, lineterminator="\r\n")
    writer.writerow([c.name for c in found.columns])
    for row in found.rows:
        writer.writerow([_csv_cell(v) for v in row.cells])


def _csv_cell(value: data.Value) -> str:
    # Numbers in full (repr), not rounded as in the terminal table.
    if isinstance(value, float):
        return repr(value)
    return data.text(value)


def _table(found: data.Table) -> None:
    """Aligned columns for a terminal: numbers to the right, ids shortened."""
    if not found.rows:
        print("no executions yet: git expegit jobs run creates some", file=sys.stderr)
        return
    header = [c.name for c in found.columns]
    body = [[_cell(found.columns[i].name, v) for i, v in enumerate(row.cells)]
            for row in found.rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    right = [c.numeric for c in found.columns]
    gap = "  "
    if sys.stdout.isatty():
        total = sum(widths) + len(gap) * (len(widths) - 1)
        if total > shutil.get_terminal_size().columns:
            print("expegit: the table is wider than the terminal: pipe it to less -S, or use "
                  "--format=csv", file=sys.stderr)
    for line in [header, *body]:
        print(gap.join((cell.rjust(w) if r else cell.ljust(w))
                       for cell, w, r in zip(line, widths, right, strict=True)).rstrip())


def _cell(column: str, value: data.Value) -> str:
    shown = data.text(value)
    if column == data.ID:
        return shown[:8]
    if not shown:
        return "-"
    return shown if len(shown) <= _WIDEST else shown[:_WIDEST - 1] + "…"
