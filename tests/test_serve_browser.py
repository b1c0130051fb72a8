"""The console in a real browser: Debian's Chromium, driven by Playwright for Python
(launched by its path; no browser download), against the real service on simulated
units. A screenshot of the console mid-session is kept in the test's directory (its
path is printed).

Without Chromium or Playwright these tests are skipped with one line saying how to
install them, and under CI (``$CI`` set, as ``.ci/run`` does) that is a failure."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estim.protocol import MessageType
from estim.sim.registry import powered

from .conftest import PICTURES
from .serve_parts import Clinic, acting, clinic, plan

CHROMIUM = os.environ.get("ESTIM_CHROMIUM", "/usr/bin/chromium")
INSTALL = (
    "apt-get update && apt-get install -y --no-install-recommends chromium, and "
    "pip install -e '.[test]' (Playwright for Python)"
)
WAIT_MS = 15_000


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"the browser tests need Playwright for Python: {INSTALL}"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"the browser tests need Chromium at {CHROMIUM}: {INSTALL}"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    problem = _missing()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the console in a real browser: {problem}", pytrace=False)
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
        )
        yield launched
        launched.close()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Clinic]:
    with clinic(tmp_path, retry_s=5.0) as c:  # a lost link stays in view for 5 s
        c.connected()
        yield c


@pytest.fixture
def page(browser: Any, demo: Clinic) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    requested: list[str] = []
    opened.on("request", lambda r: requested.append(r.url))
    opened.goto(f"{demo.base}/")
    opened.locator("#link-status", has_text="live").wait_for()
    yield opened
    context.close()
    foreign = [url for url in requested if not url.startswith(demo.base)]
    assert foreign == [], "the console fetched something from elsewhere"


def tile(page: Any, room: str) -> Any:
    return page.locator(f"#tile-{room}")


def start_in(page: Any, room: str, ma: str = "5") -> None:
    t = tile(page, room)
    t.locator("summary").click()
    t.locator("select[name=preset]").select_option("edn-low")
    t.locator("input[name=dwell]").fill("2m")
    t.locator("input[name=ramp]").fill("2s")
    t.locator("input[name=amplitude]").fill(ma)
    t.locator("form.start button[type=submit]").click()
    t.locator(".message", has_text="started session").wait_for()
    t.locator(".session").wait_for(state="visible")


def test_a_session_in_room_2_counts_down_takes_a_raise_and_refuses_too_much(
    page: Any, demo: Clinic, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    start_in(page, "room-2")
    left = tile(page, "room-2").locator(".left")
    first = left.inner_text()
    page.wait_for_function(
        "([sel, was]) => document.querySelector(sel).textContent !== was",
        arg=["#tile-room-2 .left", first],
    )
    assert left.inner_text() < first  # "1:59" after "2:00"
    for room in ("room-1", "room-3"):
        assert tile(page, room).locator(".session").is_hidden()
        assert tile(page, room).locator(".state").inner_text().lower() == "idle"
        assert acting(demo.units[room]) == {}
    t = tile(page, "room-2")
    assert t.locator(".badge.sim").is_visible()  # a simulated unit is unmistakable
    t.locator("button.up").click()
    t.locator(".message", has_text="channel 1 set to 5.1 mA").wait_for()
    assert demo.units["room-2"].requests_seen[MessageType.SET_AMPLITUDE] == 1
    t.locator("input.to").fill("60")
    t.locator("button.set-to").click()
    refusal = t.locator(".message", has_text="Refused:")
    refusal.wait_for()
    assert "amplitude 60 mA is above the unit's maximum 50 mA" in refusal.inner_text()
    assert demo.units["room-2"].requests_seen[MessageType.SET_AMPLITUDE] == 1  # nothing sent
    t.locator(".imp", has_text="kΩ").wait_for()
    shot = tmp_path / "console-mid-session.png"
    shot.write_bytes(page.screenshot(full_page=True))  # (a path= would leave a thread)
    print(f"screenshot of the console mid-session: {shot}")
    request.config.stash.setdefault(PICTURES, []).append(str(shot))
    assert shot.stat().st_size > 10_000


def test_stop_all_ends_every_session_and_the_report_link_opens_the_report(
    page: Any, demo: Clinic
) -> None:
    start_in(page, "room-2")
    for room in ("room-1", "room-3"):  # one from the API, as a charting system would
        assert demo.post(f"/rooms/{room}/sessions", plan()).status_code == 201
        tile(page, room).locator(".session").wait_for(state="visible")
    page.locator("h1").click()  # from the top of the page, Stop all is the first control
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "stop-all"
    page.keyboard.press("Enter")
    page.locator("#stop-all-result", has_text="STOP ALL: room-1: session").wait_for()
    for room in ("room-1", "room-2", "room-3"):
        ended = tile(page, room).locator(".ended-text", has_text="STOPPED")
        ended.wait_for()
        assert "stop all" in ended.inner_text()
        assert demo.units[room].events("output_off")[-1].data["reason"] == "stop"
    session_id = demo.room("room-2")["session"]["id"]
    with page.expect_popup() as popup:
        tile(page, "room-2").locator("a.report").click()
    report = popup.value
    report.wait_for_load_state()
    assert session_id in report.content()
    assert "stopped" in report.inner_text("body").lower()
    report.close()


def test_a_unit_unplugged_mid_session_shows_a_lost_link(page: Any, demo: Clinic) -> None:
    start_in(page, "room-3")
    t = tile(page, "room-3")
    t.locator(".now", has_text=".").wait_for()  # the unit reports output
    name = demo.service.rooms["room-3"].config.port.removeprefix("sim://")
    powered(name).connection.unplug()
    banner = t.locator(".banner.lost")
    banner.wait_for(state="visible")
    assert banner.inner_text().startswith("LINK LOST")
    t.locator(".ended-text", has_text="LINK LOST").wait_for()
    assert tile(page, "room-1").locator(".banner.lost").is_hidden()
    assert tile(page, "room-2").locator(".banner.lost").is_hidden()


def test_a_refused_start_shows_the_reason_and_starts_nothing(page: Any, demo: Clinic) -> None:
    t = tile(page, "room-1")
    t.locator("summary").click()
    t.locator("input[name=dwell]").fill("59s")
    t.locator("form.start button[type=submit]").click()
    message = t.locator(".message", has_text="Not started:")
    message.wait_for()
    assert "dwell '59s' is outside 60-600 s" in message.inner_text()
    assert acting(demo.units["room-1"]) == {}
