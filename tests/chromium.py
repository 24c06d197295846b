"""Headless Chromium driven over the Chrome DevTools Protocol (``websockets``): open a page, wait for a
condition evaluated in the page, read values out of it, take a screenshot.

Debian's ``chromium`` package (``/usr/bin/chromium``); :func:`find_chromium` returns None without it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """``$CHROMIUM`` or the first browser on PATH (``/usr/bin/chromium`` on Debian)."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


class Browser:
    """One headless Chromium process (own profile under ``workdir``) and its first page's CDP socket.

    Use as a context manager: the process group is killed on exit, so no renderer outlives the test.
    """

    def __init__(self, binary: str, workdir: Path, width: int = 1400, height: int = 1000) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={workdir / 'profile'}",
                "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "about:blank"]  # fmt: skip
        self.log = workdir / "chromium.log"
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
                                     start_new_session=True)  # fmt: skip
        self.loop = asyncio.new_event_loop()
        self.ws: Any = None
        self.ids = itertools.count(1)

    def __enter__(self) -> Browser:
        import httpx
        import websockets

        port = self._devtools_port()
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
                 if t["type"] == "page"]  # fmt: skip
        self.ws = self.loop.run_until_complete(
            websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=64 << 20)
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ws is not None:
            self.loop.run_until_complete(self.ws.close())
        self.loop.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def _devtools_port(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(
                r"DevTools listening on ws://[^:]+:(\d+)/", self.log.read_text(errors="replace")
            )
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError("chromium did not start: " + self.log.read_text(errors="replace")[-2000:])

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command; returns its ``result`` (events arriving meanwhile are dropped)."""
        return self.loop.run_until_complete(self._call(method, params))

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        msg_id = next(self.ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=60))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply["result"])

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, until: str, timeout: float = 60) -> None:
        """Navigate to ``url`` and wait until the JavaScript expression ``until`` is true."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.evaluate(f"Boolean({until})"):
                    return
            except RuntimeError:  # the page is still being replaced (no document.body yet)
                pass
            time.sleep(0.5)
        text = self.evaluate("document.body ? document.body.innerText.slice(0, 1500) : ''")
        raise AssertionError(f"{url}: {until} still false after {timeout:.0f} s; the page says:\n{text}")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not only the viewport)."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path
