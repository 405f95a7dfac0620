"""Headless Chromium driven over the DevTools protocol (CDP), for the dashboard's browser test.

A small client of our own over ``websockets`` (already a dependency) rather than Selenium:
the test needs a handful of commands (navigate, evaluate, type, click, screenshot), which CDP
gives directly without a driver binary or a new dependency in the lock. Typing and clicks are
real input events (``Input.insertText``, ``Input.dispatchMouseEvent``), as a person's are.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.procs import Proc, clean_env, start, stop_all

#: Debian's package (``apt install chromium``), or whatever ``chromium`` is on the PATH.
CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
WIDTH, HEIGHT = 1200, 760


class CdpError(Exception):
    pass


class Page:
    """One tab: commands answered by id; load events counted, so a click can wait for the
    page it leads to."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.loads = 0
        self._loaded = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message:
                future = self._pending.pop(message["id"], None)
                if future and not future.done():
                    if "error" in message:
                        future.set_exception(CdpError(message["error"].get("message")))
                    else:
                        future.set_result(message.get("result", {}))
            elif message.get("method") == "Page.loadEventFired":
                async with self._loaded:
                    self.loads += 1
                    self._loaded.notify_all()

    async def send(self, method: str, **params: Any) -> Any:
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        return await asyncio.wait_for(future, 30)

    async def _loaded_after(self, loads: int, within: float) -> None:
        async with self._loaded:
            await asyncio.wait_for(self._loaded.wait_for(lambda: self.loads > loads), within)

    async def goto(self, url: str, within: float = 15.0) -> None:
        loads = self.loads
        await self.send("Page.navigate", url=url)
        await self._loaded_after(loads, within)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            raise CdpError(answer["exceptionDetails"].get("text", "exception"))
        return answer["result"].get("value")

    async def wait_for(self, expression: str, within: float = 15.0) -> Any:
        """Until ``expression`` is truthy (a page that is loading meanwhile is asked again)."""
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(CdpError):
                value = await self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                text = await self.evaluate("document.body && document.body.innerText")
                raise AssertionError(f"{expression} not true within {within}s; the page:\n{text}")
            await asyncio.sleep(0.1)

    async def type_into(self, selector: str, text: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)

    async def click(self, selector: str, within: float = 15.0) -> None:
        """Click the element's centre and wait for the page the click loads."""
        box = await self.wait_for(
            f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
                if (!e) return null; e.scrollIntoView({{block: "center"}});
                const r = e.getBoundingClientRect();
                return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()"""
        )
        loads = self.loads
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left",
                clickCount=1,
            )  # fmt: skip
        await self._loaded_after(loads, within)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()


@asynccontextmanager
async def chromium(log_dir: Path) -> AsyncIterator[Page]:
    """A headless Chromium of its own profile, stopped afterwards; its one tab."""
    assert CHROMIUM, "chromium is not installed"
    profile = log_dir / "chromium-profile"
    argv = [
        CHROMIUM, "--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
        "--disable-extensions", "--disable-background-networking", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", "--remote-debugging-port=0",
        f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars", "about:blank",
    ]  # fmt: skip
    if os.geteuid() == 0:  # Chromium refuses to run as root with its sandbox
        argv.insert(1, "--no-sandbox")
    proc = start("chromium", argv, clean_env({}), log_dir)
    try:
        port = await _devtools_port(proc, profile / "DevToolsActivePort")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            targets = (await http.get("/json/list")).json()
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with connect(url, max_size=None) as ws:
            page = Page(ws)
            await page.send("Page.enable")
            await page.send(
                "Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
            try:
                yield page
            finally:
                await page.close()
    finally:
        await asyncio.to_thread(stop_all, [proc], 5)


async def _devtools_port(proc: Proc, active_port: Path, within: float = 20.0) -> int:
    """The port Chromium chose, from the file it writes once it listens."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if lines := await asyncio.to_thread(_lines, active_port):
            return int(lines[0])
        if not proc.alive():
            raise AssertionError(f"chromium exited:\n{proc.tail()}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"chromium did not listen within {within}s:\n{proc.tail()}")


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []
