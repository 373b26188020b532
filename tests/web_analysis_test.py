"""/results, /plot and /compare on a real server, in a real Chromium, with a real campaign
whose run script writes a JSON result and a PNG figure per execution."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import expegit
from tests.jobs_test import _commit_run
from tests.web_support import Gui
from tests.web_support import chromium  # noqa: F401  (a fixture)
from tests.web_support import gui  # noqa: F401  (a fixture)
from tests.web_support import page  # noqa: F401  (a fixture)
from tests.web_support import screenshot

# The experiment: data/metrics.json from its arguments (loss = 10 lr + seed - 9), and a PNG
# figure, data/curve.png, whose bar grows with the loss (written with zlib: no library).
RUN = r"""mkdir -p data
python3 - "$@" <<'EOF'
import json, struct, sys, zlib
args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:] if "=" in a)
lr, seed = float(args.get("lr", 1)), int(args.get("seed", 0))
loss = lr * 10 + (seed - 9)
json.dump({"loss": loss, "acc": {"top1": 1 - lr / 2}}, open("data/metrics.json", "w"))
w, h = 160, 100
bar = int(min(w - 10, 10 + loss * 12))
rows = b"".join(b"\0" + b"".join(
    (b"\x24\x58\xd6" if 20 < y < 80 and x < bar else b"\xf7\xf8\xfa") for x in range(w))
    for y in range(h))
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xffffffff)
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
open("data/curve.png", "wb").write(png)
open("data/note.svg", "w").write('<svg xmlns="http://www.w3.org/2000/svg"><script>'
                                  'alert(1)</script></svg>')
EOF
"""


@pytest.fixture
def sweep(campaign: Path, experiment: Path, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Path:
    """12 finished executions: lr 0.01, 0.1, 1, 2 by seed 9, 10, 11 (9 < 10 as numbers)."""
    monkeypatch.setenv("EXPEGIT_AGENT", "off")
    _commit_run(experiment, tmp_path, RUN)
    expegit("update-expe", cwd=campaign)
    expegit("jobs", "run", "local", "", "--lr=0.01,0.1,1,2 --seed=9,10,11", cwd=campaign)
    return campaign


def _column(browser_page: Any, name: str) -> list[str]:
    position = browser_page.eval_on_selector_all(
        "#results thead tr:last-child th", f"ths => ths.findIndex(t => t.dataset.column === "
        f"{name!r})")
    assert position >= 0, name
    return browser_page.eval_on_selector_all(
        "#results tbody tr", f"rows => rows.map(r => r.cells[{position}].textContent.trim())")


def test_results_sort_by_a_numeric_column_in_numeric_order(
        sweep: Path, gui: Gui, page: Any) -> None:  # noqa: F811
    page.goto(gui.url("/results"))
    assert len(page.query_selector_all("#results tbody tr")) == 12
    page.click("#results th[data-column=seed] a")
    page.wait_for_selector("#results th.sorted[data-column=seed]")
    assert _column(page, "seed") == ["9"] * 4 + ["10"] * 4 + ["11"] * 4
    page.click("#results th[data-column='metrics.loss'] a")
    page.wait_for_selector("#results th.sorted[data-column='metrics.loss']")
    losses = [float(v) for v in _column(page, "metrics.loss")]
    assert losses == sorted(losses) and losses[0] == pytest.approx(0.1)
    page.click("#results th[data-column='metrics.loss'] a")  # again: descending
    page.wait_for_selector("#results th.sorted[aria-sort=descending]")
    assert [float(v) for v in _column(page, "metrics.loss")] == sorted(losses, reverse=True)
    screenshot(page, "results")
    links = page.eval_on_selector_all("#results tbody td.id a", "as => as.map(a => a.href)")
    assert len(links) == 12 and all(re.search(r"/executions/[0-9a-f-]{36}$", h) for h in links)


def test_the_plot_renders_one_point_per_execution(
        sweep: Path, gui: Gui, page: Any) -> None:  # noqa: F811
    page.goto(gui.url("/plot?x=lr&y=metrics.loss"))
    page.wait_for_selector("#plot svg.main-svg .scatterlayer .point")
    points = page.eval_on_selector_all(
        "#plot .scatterlayer .trace", "ts => ts.map(t => t.querySelectorAll('.point').length)")
    assert points == [12, 4]  # every execution, and one mean per learning rate
    assert page.query_selector_all("#plot .errorbar")  # repeats shown as spread
    box = page.query_selector("#plot svg.main-svg").bounding_box()
    assert box["width"] > 600 and box["height"] > 400
    screenshot(page, "plot")
    page.select_option("#plot-group", "seed")  # one line per seed: the page redraws
    page.wait_for_url(re.compile(r"group=seed"))
    page.wait_for_selector("#plot svg.main-svg .scatterlayer .point")
    assert len(page.query_selector_all("#plot .scatterlayer .trace")) == 6
    screenshot(page, "plot-by-seed")


def test_the_compare_grid_shows_the_figure_of_each_execution(
        sweep: Path, gui: Gui, page: Any) -> None:  # noqa: F811
    page.goto(gui.url("/compare?state=finished"))
    assert page.eval_on_selector("#figure", "s => s.value") == "data/curve.png"
    page.wait_for_function(
        "() => [...document.querySelectorAll('#grid img')].every(i => i.complete)")
    widths = page.eval_on_selector_all("#grid img", "is => is.map(i => i.naturalWidth)")
    assert widths == [160] * 12
    captions = page.eval_on_selector_all("#grid figcaption .params",
                                         "cs => cs.map(c => c.textContent)")
    assert len(set(captions)) == 12 and "--lr=0.01 --seed=9" in captions
    screenshot(page, "compare")
    ids = page.eval_on_selector_all("#grid .meta a", "as => as.map(a => a.textContent)")
    page.goto(gui.url(f"/compare?ids={','.join(ids[:3])}&figure=data/curve.png", token=False))
    assert len(page.query_selector_all("#grid img")) == 3


def test_results_json_and_an_unknown_execution_to_compare(sweep: Path, gui: Gui) -> None:  # noqa: F811
    # The figures come from /executions/<id>/files/ (its safety: web_executions_test).
    with httpx.Client(cookies={"expegit_token": gui.token}) as client:
        records = client.get(gui.url("/results.json", token=False)).json()
        assert len(records) == 12 and records[0]["metrics.loss"] == pytest.approx(0.1)
        unknown = client.get(gui.url("/compare?ids=ffff9999", token=False))
        assert unknown.status_code == 400 and "no execution" in unknown.text


def test_results_are_paged_on_the_server_and_escaped(
        campaign: Path, gui: Gui, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("EXPEGIT_AGENT", "off")
    expegit("exec", "new", "--sweep=--i=range(250)", cwd=campaign)
    expegit("exec", "new", "--", "--name=<script>alert(1)</script>", cwd=campaign)
    with httpx.Client(cookies={"expegit_token": gui.token}) as client:
        first = client.get(gui.url("/results?sort=i&order=desc", token=False))
        assert first.status_code == 200
        assert first.text.count('<td class="id">') == 100
        assert "rows 1\u2013100 of 251" in first.text and 'rel="next"' in first.text
        last = client.get(gui.url("/results?sort=i&order=desc&page=3", token=False))
        assert last.text.count('<td class="id">') == 51
        named = client.get(gui.url("/results?sort=name", token=False)).text
        assert "<script>alert(1)</script>" not in named
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in named
        empty = client.get(gui.url("/plot", token=False))
        assert empty.status_code == 200 and "no numeric results yet" in empty.text
        config = campaign / ".expegit.yml"
        config.write_text(config.read_text() + "results: 3\n")
        broken = client.get(gui.url("/results", token=False))
        assert broken.status_code == 500 and "results must be a glob pattern" in broken.text
