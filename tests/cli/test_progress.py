"""Progress bars: count, rate and ETA on stderr for counted steps; stdout and --json stay clean."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from brainalign.cli.progress import ENV, Bars, Progress, bars_enabled, tick

from .conftest import N_RUNS, run_cli

RATE = re.compile(r"\d[\d.,]* (run|stage)/s|\d[\d.,]* s/(run|stage)")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _plain(text: str) -> str:
    return ANSI.sub("", text)


def test_tick_reaches_plain_callables_and_progress_objects():
    said: list[str] = []
    tick(said.append, "read runs", 0, 2, message="reading run 1")
    tick(said.append, "read runs", 2, 2)  # a count without a message: nothing for a plain callable
    tick(None, "read runs", 1, 2, message="ignored")
    assert said == ["reading run 1"]

    class Counter:
        def __init__(self):
            self.calls = []

        def __call__(self, message):
            self.calls.append(("say", message))

        def advance(self, step, done, total=None, *, unit="it", message=None):
            self.calls.append((step, done, total, unit, message))

    c = Counter()
    assert isinstance(c, Progress) and not isinstance(said.append, Progress)
    tick(c, "fit", 1, 4, unit="stage", message="aligning")
    assert c.calls == [("fit", 1, 4, "stage", "aligning")]


def test_bars_draw_count_rate_and_eta_on_a_terminal():
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=100, log_path=False)
    with Bars("ingest", console=con) as bars:
        assert bars.enabled
        bars("opening the mask")
        for i in range(3):
            bars.advance("read runs", i, 3, unit="run", message=f"reading run {i + 1}")
            bars._display.refresh()
        bars.advance("read runs", 3, 3, unit="run")
    out = _plain(buf.getvalue())
    assert "opening the mask" in out  # messages are logged above the bars
    assert "reading run 2" in out  # the status line shows what is being done
    assert re.search(r"eta \d:\d\d:\d\d", out)  # while running
    tail = out[out.rindex("read runs") :]  # the final frame stays on screen
    assert "3/3" in tail and "done" in tail and RATE.search(tail), tail


def test_bars_stay_off_without_a_terminal(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    buf = io.StringIO()
    con = Console(file=buf, log_path=False)
    assert not bars_enabled(con)
    with Bars("ingest", console=con) as bars:
        bars("opening the mask")
        bars.advance("read runs", 0, 2, unit="run", message="reading run 1")
        bars.advance("read runs", 2, 2, unit="run")
    out = buf.getvalue()
    assert "opening the mask" in out and "reading run 1" in out  # one line per message, as logs
    assert "\x1b" not in out and "eta" not in out and "run/s" not in out
    monkeypatch.setenv(ENV, "1")
    assert bars_enabled(con)
    monkeypatch.setenv(ENV, "0")
    assert not bars_enabled(Console(file=io.StringIO(), force_terminal=True))


def _ingest(study, root, *extra):
    return run_cli(
        "responses",
        "ingest",
        "--bids",
        study["bids"],
        "--dataset",
        "toy",
        "--atlas",
        study["atlas"],
        "--atlas-labels",
        study["atlas_labels"],
        "--zscore",
        "--root",
        root,
        *extra,
    )


def _fit(study, root, *extra):
    return run_cli(
        "fit",
        "--features",
        study["tables"] / "features.lance",
        "--root",
        root,
        "--model",
        "toy/tuned",
        "--instruction",
        "caption",
        "--test-run",
        "4",
        *extra,
    )


@pytest.fixture(scope="module")
def forced(study, tmp_path_factory):
    """ingest and fit through the command with bars forced on, then both again with --json."""
    mp = pytest.MonkeyPatch()
    mp.setenv(ENV, "1")
    try:
        root = tmp_path_factory.mktemp("bars")
        res = {"ingest": _ingest(study, root), "fit": _fit(study, root)}
        res["ingest_json"] = _ingest(study, root, "--json")
        res["fit_json"] = _fit(study, root, "--json")
    finally:
        mp.undo()
    return res


def test_ingest_shows_a_bar_over_runs(forced):
    res = forced["ingest"]
    err = _plain(res.stderr)
    tail = err[err.rindex("read runs") :]
    assert f"{N_RUNS}/{N_RUNS}" in tail and RATE.search(tail), tail
    assert "writing" in err  # step messages are still logged
    assert "\x1b" not in res.stdout and "eta" not in res.stdout  # results on stdout stay plain
    assert "sub-01/4" in res.stdout


def test_fit_shows_a_bar_over_its_stages(forced):
    err = _plain(forced["fit"].stderr)
    assert "eta " in err  # an ETA while the stages run
    tail = err[err.rindex("fit") :]
    assert "4/4" in tail and RATE.search(tail), tail
    assert "\x1b" not in forced["fit"].stdout and "scores ->" in forced["fit"].stdout


def test_json_output_stays_parseable_with_bars_forced(forced):
    ing = json.loads(forced["ingest_json"].stdout)
    assert len(ing["runs"]) == N_RUNS
    fit = json.loads(forced["fit_json"].stdout)
    assert fit["n_spaces"] == 4  # toy/tuned x caption x layers 0..3
    assert forced["ingest_json"].stderr == "" and forced["fit_json"].stderr == ""
