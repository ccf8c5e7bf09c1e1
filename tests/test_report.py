"""`lifelab report` / `lifelab compare`: the HTML is rendered in headless Chromium and checked
from the rendered DOM (tables with rows, images the browser decoded, nothing fetched from a
network); errors are one line; an empty sweep says so. One test runs a real tiny PBT sweep to
check the lineage model against what Tune and the trainable actually record."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_analysis import seeded_sweep, simulate, trial_row, write_spec

from lifelab import analysis
from lifelab.analysis.report import write_report
from lifelab.cli import main
from lifelab.platform.store import ResultStore

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--virtual-time-budget=10000"]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing (the test set-up needs root)."""
    def find():
        return shutil.which("chromium") or next(
            (p for p in ("/usr/bin/chromium",) if os.path.exists(p)), None)

    if find() is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "chromium"], ["apt-get", "update"],
                    ["apt-get", "install", "-y", "chromium"]):
            subprocess.run(cmd, env=env, capture_output=True, check=False)
            if cmd[1] == "install" and find():
                break
    path = find()
    if path is None:
        pytest.fail("headless Chromium is needed to render the report: "
                    "run `apt-get install -y chromium` (as root)")
    return path


class Dom(HTMLParser):
    """Tables (id -> rows of cell texts, header texts) and images of a rendered page."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, dict] = {}
        self.images: list[dict] = []
        self.body: dict = {}
        self.ids: set[str] = set()
        self.refs: list[str] = []
        self._table = None
        self._row = None
        self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for key in ("src", "href"):
            if attrs.get(key):
                self.refs.append(attrs[key])
        if tag == "body":
            self.body = attrs
        elif tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", f"t{len(self.tables)}"),
                                                 {"head": [], "rows": []})
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = [tag, ""]
        elif tag == "img":
            self.images.append(attrs)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(tuple(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if all(kind == "th" for kind, _ in self._row):
                self._table["head"] = [text.strip() for _, text in self._row]
            else:
                self._table["rows"].append([text.strip() for _, text in self._row])
            self._row = None
        elif tag == "table":
            self._table = None


def render(chromium: str, page: Path) -> Dom:
    """The DOM of `page` after Chromium loaded it and ran its scripts."""
    profile = tempfile.mkdtemp(prefix="ll-chrome-", dir="/tmp")
    try:
        out = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                              "--dump-dom", page.resolve().as_uri()],
                             capture_output=True, text=True, timeout=120, check=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return Dom(out.stdout)


def assert_table(dom: Dom, table_id: str, rows: int | None = None) -> dict:
    assert table_id in dom.tables, f"no table {table_id} in {sorted(dom.tables)}"
    table = dom.tables[table_id]
    assert table["head"] and table["rows"], table_id
    assert all(any(cell for cell in row) for row in table["rows"])
    if rows is not None:
        assert len(table["rows"]) == rows, table_id
    return table


def assert_self_contained(dom: Dom) -> None:
    assert dom.body.get("data-images-checked") == "yes"        # the page's script ran
    assert not [r for r in dom.refs if not r.startswith(("data:", "#"))], dom.refs


@pytest.fixture(scope="module")
def pbt_sweep(tmp_path_factory):
    return simulate(tmp_path_factory.mktemp("report") / "syn")


def test_report_renders_tables_and_plots_in_chromium(chromium, pbt_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", pbt_sweep.uri, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Best trial per learner" in printed and "All trials, best first:" in printed
    assert f"report: {out / 'report.html'}" in printed
    dom = render(chromium, out / "report.html")
    assert_self_contained(dom)
    board = assert_table(dom, "table-leaderboard", rows=4)
    head = board["head"]
    assert head[:3] == ["rank", "trial_id", "learner"]
    # ranked by what was selected on (validation), the test twin right beside it
    assert head.index("acc_avg") == head.index("val_acc_avg") + 1
    scores = [float(row[head.index("val_acc_avg")]) for row in board["rows"]]
    assert scores == sorted(scores, reverse=True)
    best = max(pbt_sweep.state, key=lambda t: sum(pbt_sweep.state[t]["val_rows"][-1]))
    assert board["rows"][0][1] == best
    groups = assert_table(dom, "table-groups", rows=2)
    assert {row[0] for row in groups["rows"]} == {"finetune", "joint"}
    # one PBT sweep: each population is one run, its selected member: no ±
    assert [row[groups["head"].index("n")] for row in groups["rows"]] == ["1", "1"]
    assert not any("±" in cell for row in groups["rows"] for cell in row)
    assert "selection" in dom.ids and "select-on-test" not in dom.ids
    assert_table(dom, "table-lineage")
    assert_table(dom, "table-exploits", rows=4)
    assert_table(dom, "table-trials", rows=4)
    # learning curves, final accuracy, 4 heatmaps, schedules, family tree: all decoded
    assert len(dom.images) == 8
    assert all(img["src"].startswith("data:image/png;base64,") and len(img["src"]) > 2000
               for img in dom.images)
    assert [img.get("data-loaded") for img in dom.images] == ["yes"] * 8
    assert {"fig-learning_curves", "fig-final_accuracy", "fig-schedules",
            "fig-family_tree"} <= dom.ids
    assert len(list((out / "figures").glob("*.png"))) == 8


def test_report_defaults_to_the_sweep_dir(tmp_path, capsys):
    uri = write_spec(tmp_path / "fresh", "fresh")
    assert main(["report", uri]) == 0
    assert (Path(uri) / "report" / "report.html").stat().st_size > 1000
    assert f"report: {Path(uri) / 'report' / 'report.html'}" in capsys.readouterr().out


def test_empty_sweep_report_says_so(chromium, tmp_path, capsys):
    uri = write_spec(tmp_path / "fresh", "fresh")
    assert main(["report", uri, "--out", str(tmp_path / "out")]) == 0
    assert "no results yet" in capsys.readouterr().out
    dom = render(chromium, tmp_path / "out" / "report.html")
    assert "no-results" in dom.ids and not dom.images
    assert_self_contained(dom)


@pytest.mark.parametrize("command", ["report", "compare"])
def test_missing_or_non_sweep_dirs_are_one_line_errors(tmp_path, capsys, command):
    assert main([command, str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lifelab: error: sweep dir") and "does not exist" in err
    assert err.count("\n") == 1
    (tmp_path / "plain").mkdir()
    assert main([command, str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err
    assert "is not a lifelab sweep" in err and err.count("\n") == 1


def test_unwritable_out_dir_is_a_one_line_error(pbt_sweep, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["report", pbt_sweep.uri, "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot write the report" in err and err.count("\n") == 1


def test_compare_puts_sweeps_side_by_side(chromium, tmp_path, capsys):
    a, _ = seeded_sweep(tmp_path, "run-a", seed=0)
    b, _ = seeded_sweep(tmp_path, "run-b", seed=100, finals={0: 0.99, 1: 0.98, 2: 0.97})
    out = tmp_path / "cmp"
    assert main(["compare", a, b, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "run-a" in printed and "run-b" in printed and "finetune lr=0.1" in printed
    dom = render(chromium, out / "report.html")
    assert_self_contained(dom)
    side = assert_table(dom, "table-side-final_acc", rows=3)
    assert side["head"] == ["group", "run-a", "run-b"]
    row = next(r for r in side["rows"] if r[0] == "finetune lr=0.1")
    mean_a, mean_b = (float(cell.split(" ")[0]) for cell in row[1:])
    assert mean_b > mean_a                                   # run-b's better first task
    assert_table(dom, "table-board-run-a", rows=7)
    assert_table(dom, "table-board-run-b", rows=7)
    assert len(dom.images) == 2 and all(i.get("data-loaded") == "yes" for i in dom.images)
    cards, bad = overflowing(chromium, out / "report.html")
    assert cards >= 5 and bad == []


def test_real_pbt_sweep_lineage_matches_what_learners_reported(ray_session, short_tmp,
                                                                chromium, capsys):
    from lifelab.searches.launch import run_sweep
    from lifelab.searches.spec import spec_from_dict

    spec = spec_from_dict({
        "name": "lineage", "learner": "finetune",
        "stream": {"tasks": 3, "steps_per_task": 10},
        "config": {"lr": {"loguniform": [1e-4, 1e-1]}, "hidden": [16], "steps_per_round": 10},
        "search": {"scheduler": "pbt", "samples": 2, "perturbation_interval": 1, "synch": True,
                   "quantile_fraction": 0.5, "mutations": {"lr": {"loguniform": [1e-4, 1e-1]}}},
        "stop": {"rounds": 3},
    })
    sweep_uri, results = run_sweep(spec, storage=short_tmp)
    assert not any(r.error for r in results)
    t = analysis.load(sweep_uri)
    summary = t.summary().set_index("trial_id")
    assert summary.exploits.sum() == len(t.events) > 0
    last = t.wide[t.wide.iteration == 3].set_index("trial_id")
    for trial in summary.index:
        # each round is one task: the learner's own metrics come from its full matrix
        assert summary.tasks[trial] == 3
        assert summary.final_acc[trial] == pytest.approx(last.acc_avg[trial])
        assert summary.bwt[trial] == pytest.approx(last.bwt[trial])
        assert summary.forgetting[trial] == pytest.approx(last.forgetting[trial])
    out = Path(short_tmp) / "out"
    assert main(["report", sweep_uri, "--out", str(out)]) == 0
    dom = render(chromium, out / "report.html")
    assert_table(dom, "table-leaderboard", rows=2)
    assert "fig-family_tree" in dom.ids and all(i.get("data-loaded") == "yes"
                                                for i in dom.images)


def test_a_sweep_without_accuracy_rows_still_gets_a_leaderboard_and_curves(tmp_path):
    """E.g. a learned optimizer: metrics but no accuracy matrix; CL columns stay blank."""
    uri = write_spec(tmp_path / "opt", "opt", search={"scheduler": "fifo", "metric": "loss_ratio",
                                                     "mode": "min"})
    store = ResultStore(uri, run=1)
    store.append("trials", [trial_row("opt", f"o{i}", "teacher", i, {"lr": 0.1 * (i + 1)})
                            for i in range(3)])
    store.append("metrics", [{"sweep": "opt", "trial_id": f"o{i}", "iteration": it,
                              "time_s": float(it), "name": "loss_ratio", "value": 1.0 / (i + it)}
                             for i in range(3) for it in (1, 2)])
    path, text = write_report(uri, out=str(tmp_path / "out"))
    assert text.split("All trials, best first:")[1].splitlines()[2].split()[0] == "o2"
    dom = Dom(path.read_text())
    board = assert_table(dom, "table-leaderboard", rows=3)
    assert [row[1] for row in board["rows"]] == ["o2", "o1", "o0"]      # mode min
    assert board["rows"][0][board["head"].index("final_acc")] == "–"
    assert len(dom.images) == 1 and "fig-learning_curves" in dom.ids


def test_text_report_separates_selection_from_reporting(pbt_sweep):
    lines = analysis.text_report(analysis.load(pbt_sweep.uri)).splitlines()
    assert lines[0].startswith("sweep syn — 4 trials") and "TEST DATA" not in lines[0]
    assert lines[1].startswith("Selected on: val_acc_avg (max; validation split")
    assert lines[2].startswith("Reported: acc_avg beside it, and final_acc") and "test" in lines[2]
    board = lines[lines.index("All trials, best first:") + 1:]
    head = board[0].split()
    assert head[4:6] == ["val_acc_avg", "acc_avg"]
    vals = [float(row.split()[4]) for row in board[1:5]]
    assert vals == sorted(vals, reverse=True)


def test_a_sweep_that_selected_on_test_says_so_in_the_first_line(tmp_path):
    uri, _ = seeded_sweep(tmp_path)
    spec_path = Path(uri) / "spec.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["search"].update(metric="acc_avg", select_on_test=True)
    spec_path.write_text(yaml.safe_dump(spec))
    path, text = write_report(uri, out=str(tmp_path / "out"))
    first = text.splitlines()[0]
    assert first.startswith("SELECTED ON TEST DATA") and "select_on_test" in first
    assert "acc_avg" in first
    page = path.read_text()
    body = page[page.index("<main>") + len("<main>"):].lstrip()
    assert body.startswith('<p class="warn" id="select-on-test">SELECTED ON TEST DATA')
    # ranked on the test metric it selected on; no duplicate test column beside it
    board = Dom(page).tables["table-leaderboard"]
    assert board["head"].count("acc_avg") == 1 and "val_acc_avg" not in board["head"]
    assert text.splitlines()[2].startswith("Selected on: acc_avg (max; test split")
    # a sweep that selected on validation has no such line
    spec["search"].update(metric="val_acc_avg", select_on_test=False)
    spec_path.write_text(yaml.safe_dump(spec))
    assert "TEST DATA" not in write_report(uri, out=str(tmp_path / "out2"))[1]


# -- layout: nothing runs past its card ---------------------------------------------------------

LONG_ROOT = "/data/" + "very-long-directory-name/" * 6 + "mnist"


def wide_sweep(tmp_path) -> str:
    """A class-incremental fifo sweep without a joint trial whose six trials differ in twelve
    config keys, some with long values (a path, a long list, a nested dict): a leaderboard far
    wider than the page. Its test matrices stay within [0.9, 1], its task-IL view beside them."""
    name = "wide-class-il-sweep-with-a-long-name"
    uri = write_spec(tmp_path / "wide", name,
                     learner="finetune", stream={"dataset": "mnist5k", "kind": "split",
                                                 "tasks": 3, "scenario": "class"},
                     search={"scheduler": "fifo", "metric": "val_acc_avg", "mode": "max"})
    store = ResultStore(uri, run=1)
    trials, acc, metrics = [], [], []
    for i in range(6):
        tid = f"wide_{i:05d}"
        config = {"learner": "finetune", "lr": 10 ** -(i + 1), "seed": i,
                  "data_root": f"{LONG_ROOT}-{i}", "hidden": [256 + i] * 12,
                  "optimizer": {"name": f"adam-{i}", "betas": [0.9, 0.999 - i / 1000],
                                "schedule": {"kind": "cosine", "warmup": i}},
                  **{f"knob_number_{k}": i * k for k in range(8)}}
        trials.append(trial_row(name, tid, "finetune", i, config, iterations=3))
        rows = [[0.9 + 0.01 * i + 0.001 * j + 0.0005 * t for j in range(t + 1)]
                for t in range(3)]
        for it, row in enumerate(rows, start=1):
            acc += [{"sweep": name, "trial_id": tid, "iteration": it, "trained_task": it - 1,
                     "eval_task": j, "accuracy": a, "split": split}
                    for split in ("test", "val") for j, a in enumerate(row)]
            til = min(1.0, float(np.mean(row)) + 0.05)
            metrics += [{"sweep": name, "trial_id": tid, "iteration": it, "time_s": 1.0,
                         "name": metric, "value": value}
                        for metric, value in (("acc_avg", float(np.mean(row))),
                                              ("val_acc_avg", float(np.mean(row)) - 0.01),
                                              ("acc_avg_til", til),
                                              ("val_acc_avg_til", til - 0.01),
                                              ("acc_avg_cil", float(np.mean(row))))]
    store.append("trials", trials)
    store.append("accuracy", acc)
    store.append("metrics", metrics)
    return uri


# Run after the page loaded: every element inside a card that is not inside a sideways-scrolling
# box must stay within its card and not overflow itself; the page must not scroll sideways.
OVERFLOW_CHECK = """<script>
window.addEventListener("load", function () {
  var bad = [], cards = document.querySelectorAll(".card");
  function scrolls(el, card) {
    for (var p = el.parentElement; p && p !== card; p = p.parentElement) {
      var ox = getComputedStyle(p).overflowX;
      if (ox === "auto" || ox === "scroll") return true;
    }
    return false;
  }
  function name(el) { return el.tagName + (el.id ? "#" + el.id : "") + " "
                             + (el.textContent || "").trim().slice(0, 30); }
  cards.forEach(function (card) {
    var box = card.getBoundingClientRect();
    if (card.scrollWidth > card.clientWidth + 1) bad.push("card " + card.id);
    card.querySelectorAll("*").forEach(function (el) {
      if (scrolls(el, card)) return;
      var r = el.getBoundingClientRect();
      if (r.width > 0 && (r.right > box.right + 1 || r.left < box.left - 1))
        bad.push(card.id + ": " + name(el));
      else if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1
               && getComputedStyle(el).overflowX === "visible")
        bad.push(card.id + ": inside " + name(el));
    });
  });
  var doc = document.documentElement;
  if (doc.scrollWidth > doc.clientWidth + 1) bad.push("the page scrolls sideways");
  document.body.dataset.cards = cards.length;
  document.body.dataset.overflow = JSON.stringify(bad);
});
</script>"""


def overflowing(chromium: str, page: Path, css: str | None = None) -> tuple[int, list[str]]:
    """(cards, elements that run past their card) of `page` rendered 1024 px wide, optionally
    with its stylesheet replaced."""
    import json
    import re

    text = page.read_text()
    if css is not None:
        text = re.sub(r"<style>.*?</style>", lambda _: f"<style>{css}</style>", text,
                      flags=re.S)
    probe = page.with_name("probe.html")
    probe.write_text(text.replace("</body>", OVERFLOW_CHECK + "</body>"))
    profile = tempfile.mkdtemp(prefix="ll-chrome-", dir="/tmp")
    try:
        out = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                              "--window-size=1024,768", "--dump-dom", probe.resolve().as_uri()],
                             capture_output=True, text=True, timeout=120, check=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    body = Dom(out.stdout).body
    return int(body.get("data-cards", 0)), json.loads(body.get("data-overflow", '["no check"]'))


@pytest.fixture(scope="module")
def wide_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wide")
    path, text = write_report(wide_sweep(tmp), out=str(tmp / "out"))
    return path, text


def test_wide_tables_scroll_inside_their_cards_in_chromium(chromium, wide_report):
    path, _ = wide_report
    cards, bad = overflowing(chromium, path)
    assert cards == 7 and bad == []     # spec, selection, groups, board, plots, trials, defs
    # the check sees overflow: without the sideways scrolling box the leaderboard runs past
    from lifelab.analysis.report_page import CSS
    assert ".scroll{overflow-x:auto;" in CSS
    cards, bad = overflowing(chromium, path, CSS.replace(".scroll{overflow-x:auto;", ".scroll{"))
    assert any(b.startswith("card-leaderboard") for b in bad)
    assert "the page scrolls sideways" in bad


def test_long_values_are_shortened_with_the_full_value_on_hover(wide_report):
    import re

    path, _ = wide_report
    page = path.read_text()
    board = page[page.index('id="table-leaderboard"'):]
    board = board[:board.index("</table>")]
    titles = dict(re.findall(r'<td title="([^"]+)">([^<]+)</td>', board))
    full = f"{LONG_ROOT}-5"
    assert titles[full] == full[:31] + "…"                        # shortened, full on hover
    assert any(t.startswith("[261, 261") and len(t) > 40 for t in titles)
    head = Dom(page).tables["table-leaderboard"]["head"]
    assert "config.optimizer.schedule.warmup" in head             # may wrap at dots only
    assert "config.<wbr>optimizer.<wbr>schedule.<wbr>warmup" in board


def test_class_il_shows_task_il_accuracy_and_what_missing_columns_need(wide_report):
    path, text = wide_report
    dom = Dom(path.read_text())
    board = dom.tables["table-leaderboard"]
    head = board["head"]
    # selected on val_acc_avg, the class-IL test accuracy beside it, then the task-IL view
    assert head[head.index("val_acc_avg") + 1:head.index("val_acc_avg") + 3] == [
        "acc_avg", "acc_avg_til"]
    assert "acc_avg_cil" not in head                  # the same as acc_avg in scenario class
    til = [float(row[head.index("acc_avg_til")]) for row in board["rows"]]
    acc = [float(row[head.index("acc_avg")]) for row in board["rows"]]
    assert all(t == pytest.approx(min(1.0, a + 0.05), abs=1e-3)
               for t, a in zip(til, acc, strict=True))
    groups = dom.tables["table-groups"]
    assert "acc_avg_til" in groups["head"]
    # no joint trial, no baseline: the columns say what they need instead of a blank
    for table in (board, groups):
        for col, need in (("intransigence", "needs a joint trial"), ("fwt", "needs a baseline")):
            assert {row[table["head"].index(col)] for row in table["rows"]} == {need}
    assert "intransigence: needs a joint trial" in text
    assert "acc_avg_til" in text.split("All trials, best first:")[1].splitlines()[1]


def test_compare_says_which_sweep_needs_a_joint_trial(tmp_path):
    from lifelab.analysis.report import per_sweep_groups, side_by_side

    a, _ = seeded_sweep(tmp_path, "run-a")              # has a joint trial
    t = analysis.load([a, wide_sweep(tmp_path)])
    side = side_by_side(t, per_sweep_groups(t), "intransigence").set_index("group")
    wide = t.sweeps[1]
    assert set(side.loc["joint lr=0.1"]) == {"0 (n=1)", "–"}
    theirs = side[wide][side["run-a"] == "–"]
    assert len(theirs) == 6 and set(theirs) == {"needs a joint trial"}
