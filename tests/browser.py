"""Headless Chromium driven over the DevTools protocol, for tests that must act on a page
(type into a prompt, press Enter, wait for a single-page app to draw) and not only load it.

The browser runs in a session of its own with a private profile; `close()` ends that
session's processes only. Chromium comes from the distribution (`make browser`,
.ci/browser.sh): without it a test is skipped locally and fails under CI.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; `make browser` (.ci/browser.sh) installs it")
        pytest.skip("chromium is not installed (`make browser` installs it)")
    return found


class Page:
    """One browser tab: navigate, read its text, type, press keys, take screenshots."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def text(self) -> str:
        """The page's visible text; empty while it is between two documents."""
        try:
            found = self.call(
                "Runtime.evaluate",
                expression="document.body ? document.body.innerText : ''",
                returnByValue=True,
            )
        except RuntimeError:  # "Inspected target navigated or closed": a reload under way
            return ""
        return str(found.get("result", {}).get("value", ""))

    def wait_for(self, done: Callable[[str], bool], timeout_s: float = 120.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.text()
            if done(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"the page did not get there in {timeout_s:.0f} s:\n{text}")
            time.sleep(0.5)

    def type_into(self, selector: str, text: str) -> None:
        found = self.call(
            "Runtime.evaluate",
            expression=f"(e => !!e && (e.focus(), true))(document.querySelector({selector!r}))",
            returnByValue=True,
        )
        assert found["result"]["value"], f"no {selector} on the page"
        self.call("Input.insertText", text=text)

    def press(self, key: str, code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call(
                "Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code
            )

    def screenshot(self, path: Path) -> bytes:
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(png)
        return png


@contextlib.contextmanager
def browser(profile: Path, width: int = 1400, height: int = 900) -> Iterator[Page]:
    """Chromium, headless, on about:blank; yields its tab."""
    import websocket  # websocket-client, which the kubernetes client brings

    process = subprocess.Popen(
        [
            chromium(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            f"--window-size={width},{height}",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_read, args=(process, lines), daemon=True)
    reader.start()
    try:
        port = _devtools_port(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            targets = json.loads(answer.read())
        tab = next(t for t in targets if t["type"] == "page")
        socket = websocket.create_connection(
            tab["webSocketDebuggerUrl"], timeout=120, suppress_origin=True
        )
        try:
            page = Page(socket)
            page.call("Page.enable")
            page.call("Runtime.enable")
            yield page
        finally:
            socket.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        reader.join(30)
        assert process.stderr is not None
        process.stderr.close()


def _read(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    """Chromium's stderr to its end, so that Chromium never blocks on a full pipe."""
    assert process.stderr is not None
    for line in process.stderr:
        lines.put(line)
    lines.put(None)


def _devtools_port(lines: queue.Queue[str | None], timeout_s: float = 60.0) -> int:
    """The port from Chromium's "DevTools listening on ws://127.0.0.1:PORT/..." line."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            raise AssertionError("chromium exited before it listened:\n" + "".join(seen[-20:]))
        seen.append(line)
        if found := re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line):
            return int(found.group(1))
    raise AssertionError(f"chromium did not listen in {timeout_s:.0f} s:\n" + "".join(seen[-20:]))
