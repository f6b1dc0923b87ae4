"""The demo page in a real headless Chromium: two users chat, one leaves and comes back.

Driven over the Chrome DevTools Protocol (tests/browser.py). Each user has their
own browser context, so their localStorage is separate as in two browsers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from browser import CHROMIUM, Chromium, Page

if TYPE_CHECKING:
    from conftest import RoostServer

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)"
)


@pytest.fixture
def demo_server(make_server: Callable[..., RoostServer]) -> RoostServer:
    return make_server("--demo")


def js(value: str) -> str:
    """A Python string as a JavaScript string literal."""
    return json.dumps(value)


async def log_in(page: Page, name: str) -> None:
    await page.type("#name", name)
    await page.click("#login")
    await page.wait_for("document.querySelector('#status').dataset.state === 'online'")
    assert await page.eval("document.querySelector('#chat').hidden") is False


async def send(page: Page, to: str, text: str) -> None:
    await page.type("#to", to)
    await page.type("#text", text)
    await page.click("#send")


def incoming(text: str) -> str:
    """JS: how many received messages show ``text``."""
    return (
        "[...document.querySelectorAll('#log li.msg.in .text')]"
        f".filter(e => e.textContent === {js(text)}).length"
    )


def outgoing_state(text: str) -> str:
    """JS: the data-state (sending/sent/delivered) of our message showing ``text``."""
    return (
        "([...document.querySelectorAll('#log li.msg.out')]"
        f".find(e => e.querySelector('.text').textContent === {js(text)}) || {{dataset: {{}}}})"
        ".dataset.state"
    )


def test_demo_page_is_served(demo_server: RoostServer) -> None:
    page = httpx.get(f"{demo_server.http}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>roost demo</title>" in page.text
    token = httpx.get(f"{demo_server.http}/demo/token", params={"user": "alice"})
    assert token.status_code == 200
    assert token.json()["user"] == "alice"
    bad = httpx.get(f"{demo_server.http}/demo/token", params={"user": "no spaces"})
    assert bad.status_code == 400
    assert "error" in bad.json()


def test_two_users_chat_and_one_comes_back(demo_server: RoostServer, tmp_path: Path) -> None:
    url = f"{demo_server.http}/"

    async def main() -> None:
        async with Chromium.launch(tmp_path / "chromium") as browser:
            alice_ctx, bob_ctx = await browser.new_context(), await browser.new_context()
            alice = await browser.new_page(alice_ctx, url)
            bob = await browser.new_page(bob_ctx, url)
            await log_in(alice, "alice")
            await log_in(bob, "bob")

            # Online: bob sees it at once, alice sees it sent, then delivered.
            await send(alice, "bob", "hello bob")
            await bob.wait_for(f"{incoming('hello bob')} === 1")
            sender = await bob.eval("document.querySelector('#log li.msg.in .meta').textContent")
            assert sender.startswith("alice")
            await alice.wait_for(f"{outgoing_state('hello bob')} === 'delivered'")

            await send(bob, "alice", "hi alice, I see you")
            await alice.wait_for(f"{incoming('hi alice, I see you')} === 1")
            await asyncio.sleep(0.2)  # let the ticks settle for the picture
            shot = await alice.screenshot(tmp_path / "demo.png")
            assert shot.stat().st_size > 5_000

            # Offline: bob closes his tab; the message waits in his inbox.
            await bob.close()
            await send(alice, "bob", "are you there?")
            await alice.wait_for(f"{outgoing_state('are you there?')} === 'sent'")

            # Bob reopens the page (same browser, so his history is kept).
            bob = await browser.new_page(bob_ctx, url)
            await log_in(bob, "bob")
            await bob.wait_for(f"{incoming('are you there?')} === 1")
            assert await bob.eval(incoming("hello bob")) == 1  # history, not a duplicate
            await alice.wait_for(f"{outgoing_state('are you there?')} === 'delivered'")

            # Nothing confirmed comes back: a fresh tab gets no redelivery.
            await bob.close()
            bob = await browser.new_page(await browser.new_context(), url)
            await log_in(bob, "bob")
            await asyncio.sleep(0.5)
            assert await bob.eval("document.querySelectorAll('#log li.msg').length") == 0

            for page in (alice, bob):
                assert page.errors == [], page.errors

    asyncio.run(main())


def test_page_reconnects_after_a_restart_and_yields_to_a_newer_tab(
    demo_server: RoostServer, tmp_path: Path
) -> None:
    url = f"{demo_server.http}/"
    status = "document.querySelector('#status').dataset.state"

    async def main() -> None:
        async with Chromium.launch(tmp_path / "chromium") as browser:
            alice = await browser.new_page(await browser.new_context(), url)
            bob = await browser.new_page(await browser.new_context(), url)
            await log_in(alice, "alice")
            await log_in(bob, "bob")

            # The server goes away: both pages notice and retry with backoff.
            demo_server.stop()
            for page in (alice, bob):
                await page.wait_for(f"{status} === 'offline'")
            demo_server.start()  # same port, same data dir
            for page in (alice, bob):
                await page.wait_for(f"{status} === 'online'", timeout=30)

            await send(alice, "bob", "after the restart")
            await bob.wait_for(f"{incoming('after the restart')} === 1")
            await alice.wait_for(f"{outgoing_state('after the restart')} === 'delivered'")

            # A newer tab of alice's replaces this one (4001), which must not fight back.
            newer = await browser.new_page(await browser.new_context(), url)
            await log_in(newer, "alice")
            await alice.wait_for(f"{status} === 'replaced'")
            await asyncio.sleep(1.0)
            assert await newer.eval(status) == "online"
            assert await alice.eval(status) == "replaced"

            for page in (alice, bob, newer):
                assert page.errors == [], page.errors

    asyncio.run(main())
