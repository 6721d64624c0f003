"""Headless Firefox driven over WebDriver BiDi, the protocol Firefox speaks natively.

Playwright needs its own patched Firefox and Selenium needs geckodriver, neither of which
Debian ships; Debian's `firefox-esr` listens for BiDi on a WebSocket by itself, so a few
commands over `websockets` drive it: open a tab, navigate, run a script, take a screenshot.
Scripts pass arguments and results as JSON. Uncaught script errors on a page are kept
in `Tab.errors` so a test can fail on them.
"""

from __future__ import annotations

import base64
import contextlib
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.sync.client import ClientConnection, connect

COMMAND_TIMEOUT = 30.0
START_TIMEOUT = 30.0
LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")

# Keep the browser off the network: no updates, telemetry, experiments or safe-browsing lists.
PREFS = {
    "app.normandy.enabled": False,
    "app.update.auto": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "extensions.update.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "services.settings.server": "http://127.0.0.1:9/",
    "toolkit.telemetry.enabled": False,
}


class ScriptError(AssertionError):
    """A script run in the page threw, or a command failed."""


@dataclass
class Firefox:
    """One BiDi session; `command` sends a command and returns its result."""

    socket: ClientConnection
    errors: dict[str, list[str]] = field(default_factory=dict)
    _next_id: int = 0

    def command(self, method: str, **params: Any) -> Any:
        self._next_id += 1
        ident = self._next_id
        self.socket.send(orjson.dumps({"id": ident, "method": method, "params": params}).decode())
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while True:
            message = orjson.loads(self.socket.recv(timeout=deadline - time.monotonic()))
            if message.get("id") == ident:
                if message.get("type") == "error":
                    raise ScriptError(f"{method}: {message.get('error')}: {message.get('message')}")
                return message["result"]
            self._note(message)

    def _note(self, message: dict[str, Any]) -> None:
        """Keep uncaught page errors, per tab."""
        if message.get("method") != "log.entryAdded":
            return
        entry = message["params"]
        if entry.get("type") == "javascript" and entry.get("level") == "error":
            context = entry["source"].get("context", "")
            self.errors.setdefault(context, []).append(str(entry.get("text")))

    @contextlib.contextmanager
    def tab(self) -> Iterator[Tab]:
        context = self.command("browsingContext.create", type="tab")["context"]
        try:
            yield Tab(self, context)
        finally:
            self.command("browsingContext.close", context=context)


@dataclass
class Tab:
    browser: Firefox
    context: str

    @property
    def errors(self) -> list[str]:
        return self.browser.errors.get(self.context, [])

    def goto(self, url: str) -> None:
        self.browser.command(
            "browsingContext.navigate", context=self.context, url=url, wait="complete"
        )

    def run(self, function: str, *args: Any) -> Any:
        """Await `function(...args)` in the page; arguments and result travel as JSON."""
        wrapper = f"async (json) => JSON.stringify(await ({function})(...JSON.parse(json)))"
        answer = self.browser.command(
            "script.callFunction",
            functionDeclaration=wrapper,
            arguments=[{"type": "string", "value": orjson.dumps(args).decode()}],
            target={"context": self.context},
            awaitPromise=True,
        )
        if answer["type"] == "exception":
            raise ScriptError(answer["exceptionDetails"]["text"])
        value = answer["result"].get("value")
        return None if value is None else orjson.loads(value)

    def wait_for(self, condition: str, *args: Any, timeout: float = 10.0) -> Any:
        """Poll the JS expression `condition` (a function of `args`) until it is truthy."""
        return self.run(
            """async (condition, timeout, ...args) => {
                const check = eval(condition);
                const deadline = performance.now() + timeout * 1000;
                for (;;) {
                    const value = await check(...args);
                    if (value) return value;
                    if (performance.now() > deadline) throw new Error(`timed out: ${condition}`);
                    await new Promise((resolve) => setTimeout(resolve, 50));
                }
            }""",
            condition,
            timeout,
            *args,
        )

    def screenshot(self, path: Path) -> None:
        data = self.browser.command("browsingContext.captureScreenshot", context=self.context)
        path.write_bytes(base64.b64decode(data["data"]))


def _write_prefs(profile: Path) -> None:
    lines = [
        f"user_pref({orjson.dumps(k).decode()}, {orjson.dumps(v).decode()});"
        for k, v in PREFS.items()
    ]
    (profile / "user.js").write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def launch(executable: str) -> Iterator[Firefox]:
    """Start headless Firefox with a throwaway profile and open a BiDi session."""
    with tempfile.TemporaryDirectory(prefix="pgcast-firefox-") as scratch:
        profile = Path(scratch) / "profile"
        profile.mkdir()
        _write_prefs(profile)
        log = Path(scratch) / "firefox.log"
        command = [executable, "--headless", "--no-remote", "--profile", str(profile)]
        command += ["--remote-debugging-port", "0", "about:blank"]
        with log.open("wb") as output:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        try:
            url = _listening_url(process, log)
            with connect(f"{url}/session", max_size=None, open_timeout=START_TIMEOUT) as socket:
                browser = Firefox(socket)
                browser.command("session.new", capabilities={})
                browser.command("session.subscribe", events=["log.entryAdded"])
                yield browser
                browser.command("session.end")
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _listening_url(process: subprocess.Popen[bytes], log: Path) -> str:
    """The BiDi address Firefox writes to its log once it listens."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if match := LISTENING.search(log.read_text(errors="replace")):
            return match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"Firefox did not start listening for WebDriver BiDi:\n{tail}")
