"""Open an HTML file in a real headless Chromium: its script errors and a screenshot.

Drives Debian's ``chromium`` through the DevTools protocol (a websocket; tornado's client, which
distributed already needs): navigate to the file, collect uncaught exceptions, ``console.error``
calls and browser log errors (a resource that failed to load), optionally run a script (e.g. to
show a tab), and capture a PNG screenshot. Network name resolution is switched off, so a page that
needs a CDN fails here as it would offline.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The path of a Chromium executable on PATH, or None."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageVisit:
    """What the browser saw: script errors, the screenshot (PNG bytes) and evaluated values."""

    errors: list[str] = field(default_factory=list)
    screenshot: bytes = b""
    values: list = field(default_factory=list)


def _start(browser: str, profile: Path, width: int, height: int) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
         "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if port_file.is_file() and port_file.read_text().strip():
            return process, int(port_file.read_text().splitlines()[0])
        if process.poll() is not None:
            raise RuntimeError(f"{browser} exited with status {process.returncode} before it listened")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{browser} did not open its DevTools port within 60 s")


class _DevTools:
    def __init__(self, connection):
        self.connection, self.next_id, self.events = connection, 0, []

    async def call(self, method: str, **params) -> dict:
        self.next_id += 1
        wanted = self.next_id
        await self.connection.write_message(json.dumps({"id": wanted, "method": method, "params": params}))
        while True:
            message = await self.connection.read_message()
            if message is None:
                raise RuntimeError(f"the browser closed the DevTools connection during {method}")
            data = json.loads(message)
            if data.get("id") == wanted:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})
            self.events.append(data)

    async def drain(self, seconds: float) -> None:
        """Collect events for ``seconds`` (the page's scripts run and draw meanwhile)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await asyncio.wait_for(self.connection.read_message(), timeout=left)
            except asyncio.TimeoutError:
                return
            if message is None:
                return
            self.events.append(json.loads(message))


def _errors(events: list[dict]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            found.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"{entry.get('text')} ({entry.get('url', '')})")
    return found


async def _visit(port: int, url: str, settle: float, scripts: list[str]) -> PageVisit:
    from tornado.websocket import websocket_connect

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
        pages = [t for t in json.load(response) if t.get("type") == "page"]
    connection = await websocket_connect(pages[0]["webSocketDebuggerUrl"], max_message_size=256 * 2**20)
    tools = _DevTools(connection)
    try:
        for domain in ("Page", "Runtime", "Log"):
            await tools.call(f"{domain}.enable")
        await tools.call("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in tools.events):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not load within 60 s")
            await tools.drain(0.2)
        await tools.drain(settle)
        visit = PageVisit()
        for script in scripts:
            result = await tools.call("Runtime.evaluate", expression=script, awaitPromise=True, returnByValue=True)
            visit.values.append(result.get("result", {}).get("value"))
            await tools.drain(settle)
        shot = await tools.call("Page.captureScreenshot", format="png")
        visit.screenshot = base64.b64decode(shot["data"])
        visit.errors = _errors(tools.events)
        return visit
    finally:
        connection.close()


def visit_page(path: str | Path, *, scripts: tuple[str, ...] = (), settle: float = 2.0, width: int = 1280,
               height: int = 900) -> PageVisit:
    """Open ``path`` in headless Chromium; run ``scripts`` (each then given ``settle`` seconds)."""
    browser = find_chromium()
    if browser is None:
        raise RuntimeError("no Chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="p2g-chromium-") as profile:
        process, port = _start(browser, Path(profile), width, height)
        try:
            return asyncio.run(_visit(port, Path(path).resolve().as_uri(), settle, list(scripts)))
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


if __name__ == "__main__":  # screenshots for the docs: python tests/_headless_chromium.py PAGE OUT.png [JS]
    import sys

    page, out = sys.argv[1], sys.argv[2]
    seen = visit_page(page, scripts=tuple(sys.argv[3:]), settle=2.5, width=1280, height=860)
    Path(out).write_bytes(seen.screenshot)
    print(f"{out}: {len(seen.screenshot):,} bytes; script errors: {seen.errors or 'none'}")
