"""One static HTML page of every run's figures and headline numbers, grouped by axis.

No server, no CDN, no script: images are linked by relative paths, so the page and the run
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


def build(paths: list[str | Path], out: str | Path, *, title: str = "Agora gallery") -> Path:
    """Writes the gallery page of the runs under ``paths`` to ``out``; returns its path."""
    out = Path(out)
    _check_out(out)
    runs = find_runs(paths)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"gallery --out {str(out)!r}: cannot create its folder: {exc.strerror or exc}") from None
    base = out.parent.resolve()
    by_axis: dict[str, list[tuple[RunDir, dict[str, Any]]]] = {a: [] for a in AXES}
    for r in runs:
        summary = r.read_summary()
        if summary.get("kind") == "tour":
            continue
        by_axis.setdefault(str(summary.get("axis", "intelligence")), []).append((r, summary))

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p class='meta'>Every picture below was drawn by a live run; numbers are from its summary.json.</p><nav>"]
    parts += [f"<a href='#{_esc(a)}'>{_esc(AXES.get(a, a))} ({len(v)})</a>" for a, v in by_axis.items()]
    parts.append("</nav>")
    for axis, items in by_axis.items():
        parts.append(f"<h2 id='{_esc(axis)}'>{_esc(AXES.get(axis, axis))}</h2>")
        if not items:
            parts.append("<p class='meta'>No runs on this axis yet.</p>")
        for r, s in items:
            status = _esc(s.get("status", "?"))
            rel = os.path.relpath(r.path.resolve(), base)
            parts.append("<div class='run'>")
            parts.append(f"<h3>{html.escape(str(s.get('name', r.path.name)))} <span class='meta'>kind {html.escape(str(s.get('kind')))}</span></h3>")
            parts.append(f"<div class='meta'>{_esc(s.get('description', ''))} · seed {_esc(s.get('seed'))} · "
                         f"<span class='status-{status}'>{status}</span> · {_esc(s.get('wall_time_s', '?'))} s · "
                         f"<a href='{html.escape(rel)}/'>{html.escape(rel)}</a></div>")
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
    parts.append("</body></html>")
    try:
        atomic_write_text(out, "\n".join(parts))
    except OSError as exc:
        raise UserError(f"gallery --out {str(out)!r} cannot be written: {exc.strerror or exc}") from None
    return out
