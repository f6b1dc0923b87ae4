"""Drive headless Chromium over the Chrome DevTools Protocol (CDP), for the demo test.

Why hand-rolled: Playwright and pyppeteer download their own browser (this
machine has no internet), and selenium needs a matching chromedriver plus a
dependency the project does not otherwise have. CDP is JSON over a WebSocket,
and roost already depends on ``websockets``, so a hundred lines suffice.

Rules:
- One Chromium process per test, with a fresh ``--user-data-dir``.
- Each user gets their own browser context (``Target.createBrowserContext``):
  separate cookies and localStorage, like two separate browsers. A page reopened
  in the same context sees what the closed one left in localStorage, like a tab
  closed and reopened.
- Pages are attached with ``flatten=True``: one socket carries every page's
  commands, told apart by ``sessionId``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

CHROMIUM = shutil.which("chromium")

# Flags that work as root in a container with no network and no GPU. The
# anti-throttling ones keep timers of pages that are not in front running at
# full speed, since several pages share one headless browser.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--window-size=900,720",
    "--remote-debugging-port=0",
]


class CDPError(Exception):
    """A CDP command failed, or JavaScript threw."""


class Chromium:
    """A running headless Chromium and the one CDP socket that controls it."""

    def __init__(self, proc: subprocess.Popen[bytes], ws: ClientConnection) -> None:
        self._proc = proc
        self._ws = ws
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, profile_dir: Path, timeout: float = 30.0) -> AsyncIterator[Chromium]:
        """Start Chromium with a fresh profile in ``profile_dir``; stop it on exit."""
        if CHROMIUM is None:
            raise RuntimeError("chromium is not installed")
        profile_dir.mkdir(parents=True, exist_ok=True)
        log = (profile_dir / "chromium.log").open("wb")
        # Its own session, so that stopping it also stops its renderer processes.
        proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            url = await _devtools_url(proc, profile_dir, timeout)
            ws = await ws_connect(url, max_size=None, compression=None, proxy=None)
            browser = cls(proc, ws)
            try:
                yield browser
            finally:
                await browser._shutdown()
        finally:
            _stop(proc)
            log.close()

    async def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        """Send one CDP command and return its result."""
        call_id = next(self._ids)
        frame: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session is not None:
            frame["sessionId"] = session
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = fut
        try:
            await self._ws.send(json.dumps(frame))
            async with asyncio.timeout(30):
                return await fut
        finally:
            self._calls.pop(call_id, None)

    async def new_context(self) -> str:
        """A new isolated browser context (its own storage); returns its id."""
        result = await self.call("Target.createBrowserContext", {"disposeOnDetach": True})
        return str(result["browserContextId"])

    async def new_page(self, context: str, url: str) -> Page:
        """Open ``url`` in a new page of ``context`` and wait until it has loaded."""
        target = await self.call(
            "Target.createTarget", {"url": "about:blank", "browserContextId": context}
        )
        attached = await self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, target["targetId"], attached["sessionId"])
        self._pages[page.session] = page
        await page.call("Runtime.enable")
        await page.call("Page.enable")
        await page.goto(url)
        return page

    async def _read(self) -> None:
        async for raw in self._ws:
            frame = json.loads(raw)
            if "id" in frame:
                fut = self._calls.get(frame["id"])
                if fut is None or fut.done():
                    continue
                if "error" in frame:
                    fut.set_exception(CDPError(f"{frame['error']}"))
                else:
                    fut.set_result(frame.get("result", {}))
            elif (page := self._pages.get(frame.get("sessionId", ""))) is not None:
                page._event(frame["method"], frame.get("params", {}))

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call("Browser.close"), 5)
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


class Page:
    """One tab. Collects its console output and uncaught JS errors for diagnostics."""

    def __init__(self, browser: Chromium, target: str, session: str) -> None:
        self.browser = browser
        self.target = target
        self.session = session
        self.console: list[str] = []
        self.errors: list[str] = []

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.call(method, params, self.session)

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    async def eval(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (awaiting promises) and return the value."""
        result = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"{expression!r} threw: {text}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll ``expression`` until it is truthy; return its value.

        On timeout, fail with the page's console and errors: a browser test
        that just says "timed out" is hard to debug.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {expression}\n"
                    f"console: {self.console}\nerrors: {self.errors}"
                )
            await asyncio.sleep(0.05)

    async def type(self, selector: str, text: str) -> None:
        """Focus an input, clear it and type ``text`` as keyboard input would."""
        await self.eval(
            f"(e => {{ e.focus(); e.select(); }})(document.querySelector({selector!r}))"
        )
        await self.call("Input.insertText", {"text": text})

    async def click(self, selector: str) -> None:
        await self.eval(f"document.querySelector({selector!r}).click()")

    async def screenshot(self, path: Path) -> Path:
        result = await self.call("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    async def close(self) -> None:
        """Close the tab, as a user would: its WebSocket goes away with it."""
        await self.browser.call("Target.closeTarget", {"targetId": self.target})
        self.browser._pages.pop(self.session, None)

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(f"{params['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details["text"])


async def _devtools_url(proc: subprocess.Popen[bytes], profile_dir: Path, timeout: float) -> str:
    """Chromium writes its port and browser path to DevToolsActivePort once it listens.

    Reading that file avoids racing for a free port (we pass port 0) and
    parsing its log output.
    """
    port_file = profile_dir / "DevToolsActivePort"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.poll() is not None:
            log = (profile_dir / "chromium.log").read_text(errors="replace")
            raise RuntimeError(f"chromium exited with {proc.returncode}:\n{log[-2000:]}")
        with contextlib.suppress(FileNotFoundError):
            lines = port_file.read_text().split()
            if len(lines) == 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        await asyncio.sleep(0.05)
    raise RuntimeError(f"chromium did not open its DevTools port within {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop Chromium and every process of its session (renderers, zygotes)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    else:
        # Chromium exited after Browser.close; helpers may linger a moment.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
