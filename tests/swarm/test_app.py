"""The SolaraViz app in a real browser: `solara run swarm/app.py`, opened in headless Chromium.

The browser is driven over the Chrome DevTools Protocol: it waits for the widgets to render,
presses Step, and reads the two pictures back. The space shows the agents (tab:blue arrows,
no orange); the plot shows polarization (tab:blue) and rotation (tab:orange) lines.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BLUE = np.array([0x1F, 0x77, 0xB4])
ORANGE = np.array([0xFF, 0x7F, 0x0E])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: `make browser` (part of `make test`) installs Debian's chromium")
    return path


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = dict(os.environ, SOLARA_HOME=str(tmp_path / "solara"), MPLBACKEND="Agg")
    log = open(tmp_path / "solara.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("solara")), "run", "swarm/app.py", "--host", "127.0.0.1",
         "--port", str(port), "--no-open", "--production"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_http(url, proc, timeout=120)
        yield url
    finally:
        _stop(proc)
        log.close()


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=2**27, open_timeout=30)
        self.next_id = 0

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[DevTools]:
    profile = tempfile.mkdtemp(dir=tmp_path)
    proc = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--window-size=1400,1000",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = None
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10) as r:
            targets = json.load(r)
        client = DevTools(next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"))
        yield client
    finally:
        if client is not None:
            client.close()
        _stop(proc)


def _images(page: DevTools) -> list[np.ndarray]:
    """Every <img> on the page, decoded to an RGB array (drawn onto a canvas in the page)."""
    from PIL import Image

    urls = page.eval("""Array.from(document.querySelectorAll('img.widget-image')).map(img => {
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL('image/png'); })""")
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).convert("RGB"))
            for u in urls or []]


def _count(img: np.ndarray, color: np.ndarray, tol: int = 30) -> int:
    return int((np.abs(img.astype(int) - color).max(axis=2) < tol).sum())


def _wait(page: DevTools, expression: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not page.eval(expression):
        if time.monotonic() > deadline:
            text = page.eval("document.body ? document.body.innerText : ''")
            raise TimeoutError(f"page never satisfied {expression!r}; it shows: {str(text)[:500]!r}")
        time.sleep(0.5)


@pytest.mark.slow
def test_app_renders_space_and_polarization_plot(app_url: str, browser: DevTools) -> None:
    browser.call("Page.enable")
    browser.call("Page.navigate", url=app_url)
    _wait(browser, "document.body && document.body.innerText.includes('Swarm emergence') && "
                   "document.querySelectorAll('img.widget-image').length >= 2", timeout=120)
    text = browser.eval("document.body.innerText")
    for label in ("Rule", "Noise", "Speed", "Number of agents", "Step: 0"):
        assert label in text, f"{label!r} missing from the page"

    # Three steps, so both lines of the plot have points to join.
    for k in range(1, 4):
        browser.eval("Array.from(document.querySelectorAll('button')).find(b => b.innerText.trim().toUpperCase() === 'STEP').click()")
        _wait(browser, f"document.body.innerText.includes('Step: {k}')", timeout=60)
    time.sleep(2)

    images = _images(browser)
    assert len(images) >= 2
    blue = [_count(img, BLUE) for img in images]
    orange = [_count(img, ORANGE) for img in images]
    space = int(np.argmax([b - 100 * o for b, o in zip(blue, orange, strict=True)]))
    plot = int(np.argmax(orange))
    assert space != plot
    assert blue[space] > 200 and orange[space] == 0, "the space shows blue agents and nothing orange"
    assert orange[plot] > 20 and blue[plot] > 20, "the plot draws polarization (blue) and rotation (orange)"
