"""One static HTML page: the fourteen cards, then every run's figures and headline numbers by axis.

No server, no CDN, no script: images (cards included) are linked by relative paths, so the page and the run
directories can be copied together anywhere.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from experiments.errors import UserError
from experiments.kinds import AXES
from experiments.rundir import RunDir, atomic_write_text, pseudo_filesystem

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.3rem;margin-top:2.5rem}
.run{border:1px solid #ddd;border-radius:8px;padding:1rem;margin:1rem 0}
.run h3{margin:.1rem 0} .meta{color:#666;font-size:.9rem}
.status-complete{color:#1a7f37} .status-failed,.status-interrupted,.status-running{color:#cf222e}
table{border-collapse:collapse;margin:.6rem 0} td,th{border:1px solid #e5e5e5;padding:.2rem .6rem;text-align:left;font-size:.9rem}
.figs{display:flex;flex-wrap:wrap;gap:1rem} .figs figure{margin:0;max-width:100%}
.figs img{max-width:100%;border:1px solid #eee} figcaption{font-size:.8rem;color:#666}
nav a{margin-right:1rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:.8rem;margin:1rem 0}
.card{border:1px solid #ddd;border-radius:8px;padding:.5rem .6rem;background:#fafafa}
.card img{width:100%;height:auto;display:block;background:#fff} .card h3{margin:.4rem 0 .2rem;font-size:1rem}
.card h3 a{color:#222;text-decoration:none} .card p{margin:.15rem 0;font-size:.82rem}
.card .shows{color:#555} .card .num{font-weight:600;color:#0b5394} .card.missing .num{color:#cf222e}
.card ul.axes{margin:.3rem 0 0;padding-left:1rem;font-size:.78rem}
"""


def find_runs(paths: list[str | Path]) -> list[RunDir]:
    """Run directories at or below each path, in a stable order."""
    found: list[RunDir] = []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise UserError(f"gallery: {str(p)!r} is not a directory")
        if RunDir.is_run(p):
            found.append(RunDir(p))
        found.extend(RunDir(s.parent) for s in sorted(p.rglob("summary.json")) if s.parent != p and RunDir.is_run(s.parent))
    if not found:
        raise UserError(f"gallery: no run directories under {', '.join(str(p) for p in paths)}")
    return found


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return _esc(value)


def _esc(value: Any) -> str:
    """Any value from a summary, as HTML text or an attribute value (quotes escaped too)."""
    return html.escape(str(value), quote=True)


def _check_out(out: Path) -> None:
    where = f"gallery --out {str(out)!r}"
    if out.is_dir():
        raise UserError(f"{where} is a directory; name the page to write (e.g. {str(out / 'gallery.html')!r})")
    if out.exists() and not out.is_file():
        raise UserError(f"{where} exists and is not a regular file")
    special = pseudo_filesystem(out)
    if special:
        raise UserError(f"{where} is under {special}, which holds no files")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-") or "run"


def build(paths: list[str | Path], out: str | Path, *, title: str = "Agora gallery") -> Path:
    """Writes the gallery page of the runs under ``paths`` to ``out``; returns its path.

    The page opens with the fourteen cards (:mod:`experiments.cards`), drawn into the folder
    ``OUT_STEM_cards/`` beside the page; below them every run has its own section (headline
    table and all its figures), grouped by axis. A card links to its run's section.
    """
    from experiments import cards as C

    out = Path(out)
    _check_out(out)
    runs = find_runs(paths)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"gallery --out {str(out)!r}: cannot create its folder: {exc.strerror or exc}") from None
    base = out.parent.resolve()
    by_axis: dict[str, list[tuple[RunDir, dict[str, Any]]]] = {a: [] for a in AXES}
    anchors: dict[Path, str] = {}
    loaded: list[C.Run] = []
    for r in runs:
        summary = r.read_summary()
        by_axis.setdefault(str(summary.get("axis", "intelligence")), []).append((r, summary))
        anchor = "run-" + _slug(os.path.relpath(r.path.resolve(), base))
        while anchor in anchors.values():
            anchor += "-"
        anchors[r.path] = anchor
        loaded.append(C.Run(r, summary))
    drawn = C.draw_all(loaded, out.parent / f"{out.stem}_cards")

    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p class='meta'>The fourteen pictures, each drawn from a live run below; a card opens its run. "
             "Numbers are from each run's summary.json and metrics.jsonl.</p>"]
    parts += _cards_html(drawn, anchors, base)
    parts.append("<h2 id='runs'>Every run, by axis</h2><nav>")
    parts += [f"<a href='#{_esc(a)}'>{_esc(AXES.get(a, a))} ({len(v)})</a>" for a, v in by_axis.items()]
    parts.append("</nav>")
    for axis, items in by_axis.items():
        parts.append(f"<h2 id='{_esc(axis)}'>{_esc(AXES.get(axis, axis))}</h2>")
        if not items:
            parts.append("<p class='meta'>No runs on this axis yet.</p>")
        for r, s in items:
            parts += _run_html(r, s, anchors[r.path], base)
    parts.append("</body></html>")
    try:
        atomic_write_text(out, "\n".join(parts))
    except OSError as exc:
        raise UserError(f"gallery --out {str(out)!r} cannot be written: {exc.strerror or exc}") from None
    return out


def _cards_html(drawn: list[Any], anchors: dict[Path, str], base: Path) -> list[str]:
    from experiments.cards import CARDS

    parts = ["<div class='cards'>"]
    for d in drawn:
        card = d.card
        target = f"#{anchors[d.run.rundir.path]}" if d.run is not None else ("#runs" if card.draw is None else f"#{card.axis}")
        src = html.escape(os.path.relpath(d.image.resolve(), base))
        state = "" if d.ok else " missing"
        parts.append(f"<div class='card{state}' id='card-{_esc(card.slug)}'>"
                     f"<a class='pic' href='{_esc(target)}'><img src='{src}' alt='{_esc(card.title)}'></a>"
                     f"<h3><a href='{_esc(target)}'>{_esc(card.title)}</a></h3>"
                     f"<p class='shows'>{_esc(card.shows)}</p><p class='num'>{_esc(d.line)}</p>")
        if card.draw is None:  # the six axes: each links to its cards
            parts.append("<ul class='axes'>")
            for axis, label in AXES.items():
                links = " · ".join(f"<a href='#card-{_esc(c.slug)}'>{_esc(c.title)}</a>"
                                   for c in CARDS if c.draw is not None and c.axis == axis)
                parts.append(f"<li><b>{_esc(label)}</b>: {links or '<span class=meta>no card</span>'}</li>")
            parts.append("</ul>")
        parts.append("</div>")
    parts.append("</div>")
    return parts


def _run_html(r: RunDir, s: dict[str, Any], anchor: str, base: Path) -> list[str]:
    status = _esc(s.get("status", "?"))
    rel = os.path.relpath(r.path.resolve(), base)
    parts = [f"<div class='run' id='{_esc(anchor)}'>",
             f"<h3>{html.escape(str(s.get('name', r.path.name)))} <span class='meta'>kind {html.escape(str(s.get('kind')))}</span></h3>",
             f"<div class='meta'>{_esc(s.get('description', ''))} · seed {_esc(s.get('seed'))} · "
             f"<span class='status-{status}'>{status}</span> · {_esc(s.get('wall_time_s', '?'))} s · "
             f"<a href='{html.escape(rel)}/'>{html.escape(rel)}</a></div>"]
    if s.get("error"):
        parts.append(f"<pre>{html.escape(str(s['error']))}</pre>")
    headline = s.get("headline") or {}
    if not isinstance(headline, dict):
        headline = {"headline": headline}
    if headline:
        parts.append("<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in headline.items()) + "</table>")
    figs = r.figures()
    if figs:
        parts.append("<div class='figs'>")
        for f in figs:
            src = html.escape(os.path.relpath(f.resolve(), base))
            parts.append(f"<figure><a href='{src}'><img src='{src}' alt='{html.escape(f.stem)}'></a><figcaption>{html.escape(f.name)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</div>")
    return parts
