"""/results, /plot and /compare: the results table, a plot of a sweep, a grid of figures.

- **/results** is `results.table()`, the same function as `git expegit results`, sorted on
  the server (any column, numbers in numeric order) and paged there like /executions: at
  10,000 executions the browser gets one page of rows, never all of them. The table is
  kept in memory between requests, keyed by the branch tip, the notes and `.expegit.yml`:
  results are committed at finish, so a new result moves the tip. /results.csv and
  /results.json are the whole table, as the CLI prints it.
- **/plot** draws a numeric result against a parameter with plotly.js (vendored in
  static/, MIT): every execution is a point, and the repeats of one value are a mean line
  with a min-max bar. The points are computed here; the browser only draws them.
- **/compare** shows one figure (a path under `data/`) of each chosen execution in a grid,
  chosen by ids (`?ids=a,b,c`, prefixes work) or by the filter of /results (state,
  parameter text). Paged, never capped. Figures come from `/compare/<id>/<path>`, which
  serves files under an execution's `data/` only: no `..`, no symlink out, and with a
  sandboxing Content-Security-Policy and nosniff, because experiment code wrote them (an
  SVG opened from a link must not run script in this origin).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.routing import Route

from git_expegit import campaign as campaigns
from git_expegit import catalog
from git_expegit import refs
from git_expegit import results
from git_expegit.campaign import Campaign
from git_expegit.errors import ExpegitError
from git_expegit.web.templating import render

PAGE = 100  # rows of /results per page
GRID = 60  # figures of /compare per page
IMAGES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
          ".gif": "image/gif", ".svg": "image/svg+xml", ".webp": "image/webp"}


# --- the table, kept between requests ------------------------------------------------------

_lock = threading.Lock()
_kept: dict[Path, tuple[tuple[object, ...], results.Table]] = {}


def table(found: Campaign) -> results.Table:
    """`results.table`, read again only when the tip, the notes or the setting moved."""
    key = _key(found)
    with _lock:
        kept = _kept.get(found.root)
    if key is not None and kept is not None and kept[0] == key:
        return kept[1]
    made = results.table(found)
    if key is not None:
        with _lock:
            _kept[found.root] = (key, made)
    return made


def _key(found: Campaign) -> tuple[object, ...] | None:
    head, notes = found.tip_and_notes()
    if refs.UNKNOWN in (head, notes):
        return None
    try:
        config = (found.root / campaigns.CONFIG).stat()
    except OSError:
        return None
    return head, notes, config.st_mtime_ns, config.st_size


def _campaign(request: Request) -> Campaign:
    return campaigns.find(request.app.state.root)


@dataclass(frozen=True)
class Filter:
    """The rows a page shows: a state, and text the parameters contain."""
    state: str
    text: str

    @classmethod
    def of(cls, request: Request) -> Filter:
        state = request.query_params.get("state", "")
        return cls(state if state in catalog.STATES else "",
                   request.query_params.get("q", "").strip())

    def apply(self, rows: Iterable[results.Row]) -> list[results.Row]:
        return [r for r in rows if (not self.state or r.state == self.state)
                and (not self.text or self.text in r.parameters)]

    def query(self) -> str:
        from urllib.parse import urlencode

        return urlencode({k: v for k, v in (("state", self.state), ("q", self.text)) if v})


# --- /results ----------------------------------------------------------------------------------

def results_page(request: Request) -> Response:
    found = table(_campaign(request))
    names = [c.name for c in found.columns]
    sort = request.query_params.get("sort", "")
    descending = request.query_params.get("order") == "desc"
    if sort in names:
        found = found.sorted(sort, descending)
    chosen = Filter.of(request)
    rows = chosen.apply(found.rows)
    pages = max(1, math.ceil(len(rows) / PAGE))
    page = min(max(_int(request.query_params.get("page"), 1), 1), pages)
    shown = rows[(page - 1) * PAGE:page * PAGE]
    return render(request, "results.html", table=found, rows=shown, total=len(rows),
                  everything=len(found.rows), sort=sort, descending=descending, page=page,
                  pages=pages, first=(page - 1) * PAGE + 1, chosen=chosen,
                  states=catalog.STATES, text=results.text,
                  kinds=Counter(c.kind for c in found.columns),
                  warnings=found.warnings[:50], more_warnings=max(0, len(found.warnings) - 50))


def results_csv(request: Request) -> Response:
    found = table(_campaign(request))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([c.name for c in found.columns])
    for row in found.rows:
        writer.writerow([repr(v) if isinstance(v, float) else results.text(v)
                         for v in row.cells])
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="results.csv"'})


def results_json(request: Request) -> Response:
    return Response(json.dumps(table(_campaign(request)).records()),
                    media_type="application/json")


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


# --- /plot ---------------------------------------------------------------------------------------

def plot_page(request: Request) -> Response:
    found = table(_campaign(request))
    chosen = Filter.of(request)
    numeric = [c.name for c in found.columns if c.kind == "result"]
    xs = [c.name for c in found.of("parameter")] + numeric
    x = request.query_params.get("x") or _default_x(found)
    y = request.query_params.get("y") or (numeric[0] if numeric else "")
    group = request.query_params.get("group", "")
    problem = ""
    figure: dict[str, Any] | None = None
    if not numeric:
        problem = ("no numeric results yet: a run writes them as JSON under data/ "
                   f"(the files the {results.SETTING} setting of .expegit.yml names; "
                   "default data/*.json)")
    elif x not in xs or y not in numeric or (group and group not in xs):
        problem = "choose a parameter for X and a numeric result for Y from the lists"
    else:
        figure = _figure(found, chosen.apply(found.rows), x, y, group)
    return render(request, "plot.html", status=400 if problem and numeric else 200,
                  xs=xs, ys=numeric, groups=[c.name for c in found.of("parameter")],
                  x=x, y=y, group=group, figure=figure, problem=problem, chosen=chosen,
                  states=catalog.STATES)


def _default_x(found: results.Table) -> str:
    """The first parameter that varies, numbers first: the sweep's axis."""
    parameters = found.of("parameter")
    for wanted in (True, False):
        for column in parameters:
            position = found.index(column.name)
            if (column.numeric == wanted
                    and len({r.cells[position] for r in found.rows}) > 1):
                return column.name
    return parameters[0].name if parameters else ""


def _figure(found: results.Table, rows: list[results.Row], x: str, y: str,
            group: str) -> dict[str, Any]:
    """One series per value of `group` (or one): its points, and per X value the mean,
    min and max of the repeats."""
    ix, iy = found.index(x), found.index(y)
    ig = found.index(group) if group else None
    numeric_x = found.columns[ix].numeric
    series: dict[str, list[results.Row]] = {}
    for row in rows:
        if row.cells[ix] is None or row.cells[iy] is None:
            continue
        name = f"{group}={results.text(row.cells[ig])}" if ig is not None else y
        series.setdefault(name or "(none)", []).append(row)
    traces = []
    for name, members in sorted(series.items(), key=lambda s: _order(s[1], ig)):
        members = sorted(members, key=lambda r: results.sort_key(r.cells[ix]))
        by_x: dict[object, list[float]] = {}
        for row in members:
            value = row.cells[iy]
            if isinstance(value, int | float):  # a result column holds numbers only
                by_x.setdefault(_plotted(row.cells[ix], numeric_x), []).append(value)
        traces.append({
            "name": name,
            "points": {"x": [_plotted(r.cells[ix], numeric_x) for r in members],
                       "y": [r.cells[iy] for r in members],
                       "id": [r.id for r in members],
                       "text": [f"{r.id[:8]} {r.parameters}" for r in members]},
            "mean": {"x": list(by_x), "y": [sum(v) / len(v) for v in by_x.values()],
                     "low": [sum(v) / len(v) - min(v) for v in by_x.values()],
                     "high": [max(v) - sum(v) / len(v) for v in by_x.values()],
                     "n": [len(v) for v in by_x.values()]}})
    return {"x": x, "y": y, "numeric_x": numeric_x, "traces": traces,
            "points": sum(len(members) for members in series.values())}


def _order(members: list[results.Row], ig: int | None) -> tuple[int, float, str]:
    return results.sort_key(members[0].cells[ig]) if ig is not None else (0, 0.0, "")


def _plotted(value: results.Value, numeric: bool) -> object:
    """A number on a numeric axis; text (true/false too) on a category axis."""
    return value if numeric else results.text(value)


# --- /compare ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    id: str
    state: str
    parameters: str
    figure: str | None  # the path of the figure, None when this execution has none


def compare_page(request: Request) -> Response:
    found = _campaign(request)
    every = catalog.executions(found)
    chosen = Filter.of(request)
    asked = request.query_params.get("ids", "")
    prefixes = [p for p in re.split(r"[\s,]+", asked) if p]
    problem = ""
    picked: list[catalog.Execution] = []
    try:
        if prefixes:
            picked = list({e.id: e for e in (catalog.resolve_in(every, p)
                                             for p in prefixes)}.values())
        elif chosen.state or chosen.text:
            picked = [e for e in every if (not chosen.state or e.state == chosen.state)
                      and (not chosen.text or chosen.text in e.parameters)]
    except ExpegitError as e:
        problem = str(e)
    figures = Counter(f for e in picked for f in _figures(found.root / e.folder))
    figure = request.query_params.get("figure", "")
    if not figure and figures:
        figure = figures.most_common(1)[0][0]  # the figure most of them have
    elif figure and picked and figure not in figures:
        problem = f"none of these executions has the figure {figure!r}"
    if figure not in figures:
        figure = ""
    pages = max(1, math.ceil(len(picked) / GRID))
    page = min(max(_int(request.query_params.get("page"), 1), 1), pages)
    cells = [Cell(e.id, e.state, e.parameters,
                  figure if figure and (found.root / e.folder / figure).is_file() else None)
             for e in picked[(page - 1) * GRID:page * GRID]]
    return render(request, "compare.html", status=400 if problem else 200, problem=problem,
                  ids=asked, chosen=chosen, states=catalog.STATES, picked=len(picked),
                  figures=sorted(figures.items()), figure=figure, cells=cells, page=page,
                  pages=pages)


def _figures(folder: Path) -> list[str]:
    """The images under the execution's data/, as paths relative to its folder."""
    out = []
    for top, dirs, names in os.walk(folder / "data"):  # symlinked folders are not entered
        dirs.sort()
        relative = os.path.relpath(top, folder)
        out += [f"{relative}/{n}".replace(os.sep, "/") for n in sorted(names)
                if os.path.splitext(n)[1].lower() in IMAGES]
    return out


def _shown_problems(title: str, endpoint: Callable[[Request], Response]
                    ) -> Callable[[Request], Response]:
    """A campaign the data layer refuses (a bad `results` setting in .expegit.yml...) is
    one line in the page, not a traceback."""
    @functools.wraps(endpoint)
    def guarded(request: Request) -> Response:
        try:
            return endpoint(request)
        except ExpegitError as e:
            return render(request, "analysis_problem.html", status=500, page_title=title,
                          problem=str(e))
    return guarded


routes: list[BaseRoute] = [
    Route("/results", _shown_problems("Results", results_page)),
    Route("/results.csv", results_csv),
    Route("/results.json", results_json),
    Route("/plot", _shown_problems("Plot", plot_page)),
    Route("/compare", _shown_problems("Compare", compare_page)),
]
