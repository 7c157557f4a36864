"""A real headless Chromium pays on the emulator's checkout page (W3C WebDriver over HTTP, no selenium)."""

from __future__ import annotations

import socket
import subprocess
import tempfile
from pathlib import Path

import httpx
import trio
from conftest import require_tool
from test_onramp import onramp_env

CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver element reference key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """The few W3C WebDriver commands this test needs, over httpx."""

    def __init__(self, base: str):
        self.base = base
        self.client = httpx.AsyncClient(base_url=base, timeout=30)
        self.session: str | None = None

    async def _call(self, method: str, path: str, body: dict | None = None) -> object:
        r = await self.client.request(method, path, json=body)
        payload = r.json()
        assert r.status_code == 200, payload
        return payload["value"]

    async def wait_ready(self) -> None:
        while True:
            try:
                if (await self.client.get("/status")).json()["value"]["ready"]:
                    return
            except httpx.HTTPError:
                pass
            await trio.sleep(0.05)

    async def start(self, chromium: str, profile: Path) -> None:
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium, "args": [*CHROME_ARGS, f"--user-data-dir={profile}"]}}}}
        self.session = (await self._call("POST", "/session", caps))["sessionId"]

    async def go(self, url: str) -> None:
        await self._call("POST", f"/session/{self.session}/url", {"url": url})

    async def find(self, css: str) -> str:
        found = await self._call("POST", f"/session/{self.session}/element", {"using": "css selector", "value": css})
        assert isinstance(found, dict) and ELEMENT in found, found
        return found[ELEMENT]

    async def click(self, element: str) -> None:
        await self._call("POST", f"/session/{self.session}/element/{element}/click", {})

    async def text(self, element: str) -> str:
        return await self._call("GET", f"/session/{self.session}/element/{element}/text")

    async def text_of(self, css: str) -> str:
        """The text of the element ``css`` names, found again while a navigation (the form POST) replaces the
        page: an element of the old page is 'stale', and the new page may not have it yet."""
        while True:
            r = await self.client.post(f"/session/{self.session}/element", json={"using": "css selector", "value": css})
            if r.status_code == 200:
                r = await self.client.get(f"/session/{self.session}/element/{r.json()['value'][ELEMENT]}/text")
                if r.status_code == 200:
                    return r.json()["value"]
            error = r.json()["value"].get("error")
            assert error in ("stale element reference", "no such element"), r.json()
            await trio.sleep(0.05)

    async def aclose(self) -> None:
        if self.session:
            await self.client.delete(f"/session/{self.session}")
        await self.client.aclose()


async def test_a_real_browser_pays_and_the_daemon_lists_the_topup(nursery, sockdir):
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    port = free_port()
    profile = Path(tempfile.mkdtemp(prefix="chrome-", dir=sockdir))
    driver_proc = subprocess.Popen([chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    driver = WebDriver(f"http://127.0.0.1:{port}")
    try:
        with trio.fail_after(60):
            async with onramp_env(nursery, sockdir) as env:
                session = await env.create("15.75")
                await driver.wait_ready()
                await driver.start(chromium, profile)
                await driver.go(session["url"])
                assert await driver.text(await driver.find("#session-id")) == session["id"]
                await driver.click(await driver.find("button#pay"))
                while "Payment complete" not in await driver.text_of("#notice"):
                    await trio.sleep(0.05)
                assert await driver.text_of("#status") == "fulfillment_complete"
                [topup] = await env.wait_pending()
                assert topup["session_id"] == session["id"] and topup["amount"] == "15.75"
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(10):
                await driver.aclose()
        driver_proc.terminate()
        driver_proc.wait(10)


async def test_a_real_browser_pays_through_the_embedded_page(nursery, sockdir):
    """redirect_url null: the daemon's own page mounts the (stand-in) widget under its strict CSP; pay; pending."""
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    port = free_port()
    profile = Path(tempfile.mkdtemp(prefix="chrome-", dir=sockdir))
    driver_proc = subprocess.Popen([chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    driver = WebDriver(f"http://127.0.0.1:{port}")
    try:
        with trio.fail_after(60):
            async with onramp_env(nursery, sockdir, embedded=True) as env:
                session = await env.create("15.75")
                assert session["url"] == f"{env.http}/onramp/{session['id']}"
                await driver.wait_ready()
                await driver.start(chromium, profile)
                await driver.go(session["url"])
                assert await driver.text(await driver.find("#session-id")) == session["id"]
                # The widget is mounted by the scripts the CSP allows (the emulator's origin) and our nonce.
                assert (await driver.text_of("#onramp-summary")).startswith("Buy 15.75 usdc on ethereum")
                await driver.click(await driver.find("button#onramp-pay"))
                while "Payment complete" not in await driver.text_of("#onramp-notice"):
                    await trio.sleep(0.05)
                # The page shows the status the widget reported.
                while await driver.text_of("#status") != "fulfillment_complete":
                    await trio.sleep(0.05)
                [topup] = await env.wait_pending()
                assert topup["session_id"] == session["id"] and topup["amount"] == "15.75"
                assert session["client_secret"] not in env.daemon.stderr()
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(10):
                await driver.aclose()
        driver_proc.terminate()
        driver_proc.wait(10)
