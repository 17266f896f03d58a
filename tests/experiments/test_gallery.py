"""The gallery page and the tour command: cards first, every link resolves, runs continue."""

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from experiments import AXES, RunDir, cards, gallery, runner
from experiments.cli import main
from experiments.errors import UserError
from experiments.tour import load, run_tour


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.headings, self.ids, self._in_h2 = [], [], set(), False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("img", "a", "script", "link") and (attrs.get("src") or attrs.get("href")):
            self.links.append((tag, attrs.get("src") or attrs.get("href")))
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def _parse(page: Path) -> Links:
    parser = Links()
    parser.feed(page.read_text())
    return parser


def test_tour_builds_a_gallery_whose_links_all_resolve(tmp_path):
    tour = {"runs": [
        {"config": "rollout_spread", "name": "spread", "overrides": {"episodes": 2}},
        {"config": "gang_scheduling", "overrides": {"jobs": 10, "arrival_rates": [1.0], "trials": 1}},
    ]}
    res = run_tour(tour, out=tmp_path / "tour", quiet=True, screenshot=False)
    page = tmp_path / "tour" / "gallery.html"
    assert res.failed == [] and res.page == page and page.is_file()
    assert RunDir(tmp_path / "tour/runs/spread").read_summary()["status"] == "complete"

    parser = _parse(page)
    assert parser.headings == ["Every run, by axis", *AXES.values()]
    assert not [src for tag, src in parser.links if tag in ("script", "link") or src.startswith(("http:", "https:", "//"))]
    for _, href in parser.links:
        path, _, anchor = href.partition("#")
        if path:
            assert (page.parent / unquote(path)).exists(), href
        if anchor:
            assert anchor in parser.ids, href  # every in-page link has its target
    imgs = {(page.parent / unquote(src)).resolve() for tag, src in parser.links if tag == "img"}
    figures = {p.resolve() for r in gallery.find_runs([tmp_path / "tour" / "runs"]) for p in r.figures()}
    card_pngs = {p.resolve() for p in (tmp_path / "tour" / "gallery_cards").glob("*.png")}
    assert len(card_pngs) == len(cards.CARDS) == 14
    assert imgs == figures | card_pngs
    text = page.read_text()
    assert "random_mean_return" in text
    # The gang card is drawn from its run; the others say which run they miss.
    assert text.count("class='card missing'") == 12
    assert "no complete run of kind ctde_compare or mappo here: `agora run ctde_spread` makes one" in text


def test_card_numbers_come_from_the_run(tmp_path):
    rd = runner.run("gang_scheduling", out=tmp_path / "g", overrides=["jobs=12", "arrival_rates=[2.0]", "trials=2"],
                    quiet=True)
    rows = [m for m in rd.read_metrics() if m.get("policy") == "greedy" and "arrival_rate" in m]
    deadlocks = sum(m["deadlocked"] for m in rows)  # the reference: a plain count of the run's lines
    drawn = {d.card.slug: d for d in cards.draw_all([cards.Run(rd, rd.read_summary())], tmp_path / "c")}
    assert drawn["gang"].ok and drawn["gang"].run.rundir.path == rd.path
    assert drawn["gang"].line.startswith(f"greedy placement deadlocked {deadlocks} of 2 workloads")
    assert drawn["axes"].line == "1 runs on 1 of the 6 axes"
    assert not drawn["ring"].ok and "agora run ring_allreduce" in drawn["ring"].line


def test_a_run_the_card_cannot_read_gives_a_no_run_card_not_a_crash(tmp_path):
    rd = runner.run("shuffle_wordcount", out=tmp_path / "s", overrides=["num_partitions=2", "map_tasks=1", "workers=0"],
                    quiet=True)
    rd.metrics_path.write_text("")  # a run whose lines are gone
    page = gallery.build([rd.path], tmp_path / "p.html")
    text = page.read_text()
    assert "could not draw from shuffle_wordcount: " in text and "class='card missing' id='card-shuffle'" in text
    assert (tmp_path / "p_cards" / "05-shuffle.png").stat().st_size > 1000


def test_tour_again_skips_complete_runs_and_resumes_interrupted_ones(tmp_path):
    tour = {"runs": [{"config": "rollout_spread", "name": "a", "overrides": {"episodes": 1}},
                     {"config": "rollout_spread", "name": "b", "overrides": {"episodes": 1}}]}
    run_tour(tour, out=tmp_path / "t", quiet=True, screenshot=False)
    first = (tmp_path / "t/runs/a/summary.json").read_text()
    b = RunDir(tmp_path / "t/runs/b")
    summary = b.read_summary()
    summary["status"] = "interrupted"
    b.write_summary(summary)
    run_tour(tour, out=tmp_path / "t", quiet=True, screenshot=False)
    assert (tmp_path / "t/runs/a/summary.json").read_text() == first  # not run again
    again = b.read_summary()
    assert again["status"] == "complete" and again["resumed"] == 1
    with pytest.raises(UserError, match="holds another tour"):
        run_tour({"runs": tour["runs"][:1]}, out=tmp_path / "t", quiet=True, screenshot=False)


def test_every_tour_entry_gets_the_tour_seed_and_the_command_prints_the_page(tmp_path, capsys):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("seed: 7\nruns:\n  - {config: rollout_spread, name: a, overrides: {episodes: 1}}\n"
                   "  - {config: rollout_spread, name: b, overrides: {episodes: 1, policies: [noop]}}\n")
    assert main(["tour", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--no-screenshot", "--seed", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"gallery page: {(tmp_path / 'o' / 'gallery.html').resolve()}"
    assert [json.loads((tmp_path / f"o/runs/{n}/summary.json").read_text())["seed"] for n in "ab"] == [3, 3]


def test_a_tour_is_a_command_not_a_kind(tmp_path, capsys):
    assert main(["run", "tour", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "run it with `agora tour tour`" in capsys.readouterr().err
    assert main(["tour", "rollout_spread", "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "not a tour" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert len(load().runs) >= 14  # the shipped tour validates


def test_gallery_of_several_directories(tmp_path):
    runner.run({"kind": "test_walk", "steps": 2}, out=tmp_path / "x", quiet=True)
    runner.run({"kind": "rollout", "episodes": 1, "policies": ["noop"]}, out=tmp_path / "y", quiet=True)
    page = gallery.build([tmp_path / "x", tmp_path / "y"], tmp_path / "out" / "g.html")
    text = page.read_text()
    assert text.count("<div class='run' id=") == 2
    assert text.index("id='training'") < text.index("test_walk") < text.index("id='intelligence'") < text.index("rollout")
    assert Path(tmp_path / "out" / "../x/figures/walk.png").exists() and "../x/figures/walk.png" in text
