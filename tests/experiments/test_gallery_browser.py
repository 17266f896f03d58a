"""The gallery page in a real browser: headless Chromium over the DevTools protocol.

The page is built from tiny real runs (a tour of tiny budgets) of every card's kind but the
federated one, whose Flower-on-Ray run takes longer than a test should: its card must then say
the run is missing, with a "no run" picture, and the page must not fail. The browser checks
that every card's image decodes (naturalWidth > 0), that each card's link lands on its section,
that the console logged no error, and takes a screenshot into the tour directory.
"""

from __future__ import annotations

import base64
import importlib.util
import time
from pathlib import Path

from experiments import cards
from experiments.tour import run_tour

# The Chromium and DevTools fixtures of the Solara app test, reused as they are.
_spec = importlib.util.spec_from_file_location("_swarm_app_browser", Path(__file__).parents[1] / "swarm" / "test_app.py")
_app = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_app)
chromium = _app.chromium
browser = _app.browser

TINY = {
    "runs": [
        {"config": "scaling_dp", "overrides": {"counts": [2], "steps": 2, "widths": [8, 8, 1], "global_batch": 32}},
        {"config": "ring_allreduce", "overrides": {"world_sizes": [2, 3], "sizes": [10], "repeats": 1, "algorithms": ["ring"]}},
        {"config": "zero_memory", "overrides": {"world_size": 2, "steps": 1, "widths": [4, 4], "fsdp": False}},
        {"config": "shuffle_wordcount", "overrides": {"num_partitions": 3, "map_tasks": 2, "workers": 0}},
        {"config": "ps_straggler", "overrides": {"steps": 3, "straggler_delay_s": 0.0, "num_workers": 2, "num_servers": 1,
                                                 "dim": 4, "examples_per_worker": 8}},
        {"config": "gang_scheduling", "overrides": {"jobs": 10, "arrival_rates": [1.0], "trials": 1}},
        {"config": "paged_kv_sharegpt", "overrides": {"num_requests": 20, "gen_sequences": 2, "gen_max_prompt": 4,
                                                      "gen_max_new": 4, "serve_requests": 3, "block_sizes": [16]}},
        {"config": "moe_balance", "overrides": {"steps": 3, "batch": 32, "log_every": 1}},
        {"config": "funnel_pydoc", "overrides": {"pool_size": 20, "num_queries": 1, "candidates": [10], "stage1": ["bm25"]}},
        {"config": "couzin_regimes", "overrides": {"n_agents": 10, "orientation_width": [2.0], "seeds": 1, "steps": 20,
                                                   "transient": 10, "sweep.parallel": False}},
        {"config": "ctde_spread", "overrides": {"seeds": [0], "train.total_steps": 50, "train.num_envs": 2,
                                                "train.num_minibatches": 1, "train.update_epochs": 1, "eval_every": 1,
                                                "eval_episodes": 2, "checkpoint_every": 1}},
        {"config": "secagg_protocol", "overrides": {"num_clients": [3], "dim": 8, "dropout_rates": [0.0], "neighbours": 0}},
    ],
}


def test_gallery_cards_render_and_link_in_chromium(tmp_path: Path, browser) -> None:  # noqa: ANN001
    tour = run_tour(TINY, out=tmp_path / "tour", quiet=True, screenshot=False)
    assert tour.failed == []
    # Errors the page itself sees (scripts, console.error, images that fail to load) ...
    browser.call("Page.enable")
    browser.call("Page.addScriptToEvaluateOnNewDocument", source="""
        window.__errors = [];
        window.addEventListener('error', e => window.__errors.push(String(e.message || (e.target && e.target.src))), true);
        const err = console.error; console.error = (...a) => { window.__errors.push(a.join(' ')); err(...a); };""")
    browser.call("Page.navigate", url=tour.page.resolve().as_uri())
    _app._wait(browser, "document.readyState === 'complete' && "
                        "Array.from(document.images).every(i => i.complete)", timeout=60)

    got = browser.eval("""Array.from(document.querySelectorAll('.card')).map(c => ({
        id: c.id, missing: c.classList.contains('missing'), width: c.querySelector('img').naturalWidth,
        href: c.querySelector('a.pic').getAttribute('href'), text: c.innerText}))""")
    assert [c["id"] for c in got] == [f"card-{c.slug}" for c in cards.CARDS]
    assert all(c["width"] > 0 for c in got), [c["id"] for c in got if not c["width"]]
    missing = [c["id"] for c in got if c["missing"]]
    assert missing == ["card-fedavg"], missing
    fed = next(c for c in got if c["id"] == "card-fedavg")
    assert "no complete run of kind federated" in fed["text"] and "agora run fedavg_digits" in fed["text"]

    # Each card's link lands on its run's section (the missing one on its axis); the section
    # of a drawn card belongs to the run of that card's kind.
    for c in got:
        browser.eval(f"document.querySelector('#{c['id']} a.pic').click()")
        time.sleep(0.05)
        at = browser.eval("""(() => { const t = document.querySelector(location.hash);
            return t ? {hash: location.hash, top: Math.round(t.getBoundingClientRect().top), text: t.innerText} : null })()""")
        assert at is not None and at["hash"] == c["href"], (c["id"], at)
        assert abs(at["top"]) <= 2 or _at_page_end(browser), (c["id"], at["top"])
        card = next(k for k in cards.CARDS if f"card-{k.slug}" == c["id"])
        if card.kinds and not c["missing"]:
            assert f"kind {card.kinds[0]}" in at["text"], (c["id"], at["text"][:200])

    # The six-axes card links each axis to the cards on it.
    axes_links = browser.eval("Array.from(document.querySelectorAll('#card-axes ul.axes a')).map(a => a.getAttribute('href'))")
    assert sorted(axes_links) == sorted(f"#card-{k.slug}" for k in cards.CARDS if k.draw is not None)

    # ... and the browser's own console log, which Log.enable replays from the start.
    assert browser.eval("window.__errors") == []
    entries = _events(browser, "Log.enable", "Log.entryAdded")
    assert [e for e in entries if e["entry"]["level"] == "error"] == []

    shot = browser.call("Page.captureScreenshot", format="png")
    png = tour.path / "gallery-browser.png"
    png.write_bytes(base64.b64decode(shot["data"]))
    assert png.stat().st_size > 10_000


def _events(page, method: str, event: str) -> list[dict]:  # noqa: ANN001
    """Calls ``method`` and returns the ``event`` notifications sent before its reply."""
    import json

    page.next_id += 1
    page.ws.send(json.dumps({"id": page.next_id, "method": method, "params": {}}))
    seen = []
    while True:
        msg = json.loads(page.ws.recv(timeout=60))
        if msg.get("method") == event:
            seen.append(msg["params"])
        if msg.get("id") == page.next_id:
            return seen


def _at_page_end(page) -> bool:  # noqa: ANN001
    # A section near the bottom cannot scroll to the top of the window.
    return bool(page.eval("Math.ceil(window.scrollY + window.innerHeight) >= document.documentElement.scrollHeight - 2"))
