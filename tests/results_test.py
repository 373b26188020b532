"""git expegit results and the table behind it (git_expegit/results.py), on real campaigns
whose run script writes data/metrics.json from its arguments."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import pytest

from git_expegit import campaign as campaigns
from git_expegit import results
from tests.conftest import expegit
from tests.conftest import git
from tests.jobs_test import _commit_run

# The experiment: its loss is the learning rate times ten plus the seed, and its accuracy
# nested one level down; `--broken` also writes a file that is not JSON.
METRICS = """mkdir -p data
python3 - "$@" <<'EOF'
import json, sys
args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:] if "=" in a)
lr, seed = float(args.get("lr", 1)), int(args.get("seed", 0))
json.dump({"loss": lr * 10 + seed, "acc": {"top1": 1 - lr}, "model": "cnn", "ok": True},
          open("data/metrics.json", "w"))
if "--broken" in sys.argv:
    open("data/broken.json", "w").write("{not json")
EOF
"""


@pytest.fixture
def sweep(campaign: Path, experiment: Path, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Path:
    """A campaign with six finished executions: lr 0.1, 0.01, 1 by seed 9, 10."""
    monkeypatch.setenv("EXPEGIT_AGENT", "off")
    _commit_run(experiment, tmp_path, METRICS)
    expegit("update-expe", cwd=campaign)
    expegit("jobs", "run", "local", "", "--lr=0.1,0.01,1 --seed=9,10", cwd=campaign)
    return campaign


def test_csv_has_a_header_and_one_typed_row_per_execution(sweep: Path) -> None:
    done = subprocess.run(["git", "expegit", "results", "--format=csv"], cwd=sweep,
                          capture_output=True, check=True)
    assert done.stdout.count(b"\r\n") == 7  # RFC 4180 line ends, a header and six rows
    rows = list(csv.DictReader(io.StringIO(done.stdout.decode(), newline="")))
    assert list(rows[0]) == ["id", "state", "lr", "seed", "metrics.acc.top1", "metrics.loss"]
    assert len(rows) == 6 and {r["state"] for r in rows} == {"finished"}
    for row in rows:
        assert float(row["metrics.loss"]) == pytest.approx(
            float(row["lr"]) * 10 + int(row["seed"]))
    assert done.stderr == b""


def test_json_round_trips_with_numbers_as_numbers(sweep: Path) -> None:
    records = json.loads(expegit("results", "--format=json", cwd=sweep).stdout)
    listed = json.loads(expegit("list", "--format=json", cwd=sweep).stdout)
    assert [r["id"] for r in records] == [e["id"] for e in listed]
    first = records[0]
    assert first["lr"] == 0.1 and first["seed"] == 9 and isinstance(first["seed"], int)
    assert first["metrics.loss"] == pytest.approx(10.0)
    assert first["metrics.acc.top1"] == pytest.approx(0.9)
    assert "metrics.model" not in first and "metrics.ok" not in first  # not numbers
    assert json.loads(json.dumps(records)) == records


def test_the_terminal_table_is_aligned(sweep: Path) -> None:
    lines = expegit("results", cwd=sweep).stdout.splitlines()
    assert lines[0].split() == ["id", "state", "lr", "seed", "metrics.acc.top1",
                                "metrics.loss"]
    assert len(lines) == 7
    # Numbers are right-aligned: every row's loss ends where the header's name does.
    end = lines[0].index("metrics.loss") + len("metrics.loss")
    assert all(len(line) == end for line in lines)
    assert all(line.split()[0] == line.split()[0][:8] for line in lines[1:])  # short ids


def test_numeric_columns_sort_in_numeric_order(sweep: Path) -> None:
    table = results.table(campaigns.find(sweep))
    by_seed = [r.cells[table.index("seed")] for r in table.sorted("seed").rows]
    assert by_seed == [9, 9, 9, 10, 10, 10]  # as text, "10" would come before "9"
    by_lr = [r.cells[table.index("lr")] for r in table.sorted("lr", descending=True).rows]
    assert by_lr == [1, 1, 0.1, 0.1, 0.01, 0.01]


def test_a_broken_json_file_is_skipped_with_a_warning(
        campaign: Path, experiment: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPEGIT_AGENT", "off")
    _commit_run(experiment, tmp_path, METRICS)
    expegit("update-expe", cwd=campaign)
    expegit("jobs", "run", "local", "", "--lr=0.5 --broken", cwd=campaign)
    done = expegit("results", "--format=json", cwd=campaign)
    [record] = json.loads(done.stdout)
    assert record["metrics.loss"] == 5.0 and record["broken"] is True
    [warning] = done.stderr.splitlines()
    assert warning.startswith("expegit: warning: excs/") and "data/broken.json: not JSON" in warning


def test_an_unknown_format_is_a_one_line_usage_error(campaign: Path) -> None:
    done = expegit("results", "--format=xml", cwd=campaign, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "expegit: unknown format 'xml': use table, csv or json\n"


def test_the_results_setting_of_expegit_yml_chooses_the_files(
        sweep: Path) -> None:
    config = sweep / ".expegit.yml"
    config.write_text(config.read_text() + "results: [data/*.txt, data/*.json]\n")
    git("commit", "-qam", "results setting", cwd=sweep)
    [_, execution] = json.loads(expegit("results", "--format=json", cwd=sweep).stdout)[:2]
    folder = sweep / "excs" / execution["id"][:2] / execution["id"] / "data"
    (folder / "eval").mkdir()
    (folder / "eval" / "top.json").write_text('{"f1": 0.5}')
    (folder / "extra.txt").write_text("42")
    config.write_text(config.read_text().replace("data/*.txt", "data/**/*.json"))
    records = json.loads(expegit("results", "--format=json", cwd=sweep).stdout)
    assert records[1]["eval/top.f1"] == 0.5 and records[1]["metrics.loss"] == 11.0
    assert "eval/top.f1" in records[0] and records[0]["eval/top.f1"] is None
    config.write_text(config.read_text() + "results: /etc/*.json\n")
    refused = expegit("results", cwd=sweep, check=False)
    assert refused.returncode == 3 and "leaves the execution's folder" in refused.stderr


def test_a_symlink_out_of_the_execution_is_not_read(sweep: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"pin": 1234}')
    first = json.loads(expegit("results", "--format=json", cwd=sweep).stdout)[0]
    data = sweep / "excs" / first["id"][:2] / first["id"] / "data"
    (data / "secret.json").symlink_to(secret)
    done = expegit("results", "--format=json", cwd=sweep)
    assert "secret.pin" not in json.loads(done.stdout)[0]
    assert "symlink out of the execution's folder" in done.stderr


@pytest.mark.parametrize(("stored", "expected"), [
    ("--param first --flag", {"param": "first", "flag": True}),
    ("--lr=1e-3 -k 2 n=3 data.csv --neg -1", {"lr": 0.001, "k": 2, "n": 3, "neg": -1,
                                              "parameters": "data.csv"}),
    ("--name 'two words' --last", {"name": "two words", "last": True}),
    ("a b", {"parameters": "a b"}),
    ("", {}),
])
def test_parameters_split_into_typed_columns(stored: str, expected: dict[str, object]) -> None:
    assert results.split_parameters(stored) == expected


def test_a_flag_absent_from_a_row_is_false_there(campaign: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPEGIT_AGENT", "off")
    expegit("exec", "new", "--sweep= --param¤first;second¤--flag;", cwd=campaign)
    records = json.loads(expegit("results", "--format=json", cwd=campaign).stdout)
    assert [(r["state"], r["param"], r["flag"]) for r in records] == [
        ("created", "first", True), ("created", "first", False),
        ("created", "second", True), ("created", "second", False)]
