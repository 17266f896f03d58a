"""The gallery page: one static page, every figure linked, every link resolves, axes grouped."""

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

from experiments import AXES, RunDir, gallery, runner


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.headings, self._in_h2 = [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("img", "a", "script", "link") and (attrs.get("src") or attrs.get("href")):
            self.links.append((tag, attrs.get("src") or attrs.get("href")))
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def test_tour_builds_a_gallery_whose_links_all_resolve(tmp_path):
    tour = {
        "kind": "tour",
        "runs": [
            {"config": "rollout_spread", "name": "spread", "overrides": {"episodes": 2}},
            {"config": "rollout_spread", "name": "spread_noop", "overrides": {"episodes": 2, "policies": ["noop"]}},
        ],
    }
    rd = runner.run(tour, out=tmp_path / "tour", quiet=True)
    page = tmp_path / "tour" / "gallery.html"
    assert rd.read_summary()["status"] == "complete" and page.is_file()

    parser = Links()
    parser.feed(page.read_text())
    assert parser.headings == list(AXES.values())
    assert not [src for tag, src in parser.links if tag in ("script", "link") or src.startswith(("http:", "https:", "//"))]
    imgs = {(page.parent / unquote(src)).resolve() for tag, src in parser.links if tag == "img"}
    for _, href in parser.links:
        assert (page.parent / unquote(href.split("#")[0])).exists(), href
    figures = {p.resolve() for r in gallery.find_runs([tmp_path / "tour" / "runs"]) for p in r.figures()}
    assert len(figures) == 2 and imgs == figures
    assert "random_mean_return" in page.read_text()


def test_tour_resume_skips_finished_runs(tmp_path, monkeypatch):
    tour = {"kind": "tour", "runs": [{"config": "rollout_spread", "name": "a", "overrides": {"episodes": 1}},
                                     {"config": "rollout_spread", "name": "b", "overrides": {"episodes": 1}}]}
    rd = runner.run(tour, out=tmp_path / "t", quiet=True)
    first = (tmp_path / "t/runs/a/summary.json").read_text()
    summary = rd.read_summary()
    summary["status"] = "interrupted"
    rd.write_summary(summary)
    runner.resume(rd.path, quiet=True)
    assert (tmp_path / "t/runs/a/summary.json").read_text() == first  # not run again
    assert RunDir(tmp_path / "t").read_summary()["status"] == "complete"


def test_gallery_of_several_directories(tmp_path):
    runner.run({"kind": "test_walk", "steps": 2}, out=tmp_path / "x", quiet=True)
    runner.run({"kind": "rollout", "episodes": 1, "policies": ["noop"]}, out=tmp_path / "y", quiet=True)
    page = gallery.build([tmp_path / "x", tmp_path / "y"], tmp_path / "out" / "g.html")
    text = page.read_text()
    assert text.count("<div class='run'>") == 2
    assert text.index("id='training'") < text.index("test_walk") < text.index("id='intelligence'") < text.index("rollout")
    assert Path(tmp_path / "out" / "../x/figures/walk.png").exists() and "../x/figures/walk.png" in text
