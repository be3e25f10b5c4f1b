"""The operator console in a real browser: Debian's headless Chromium driven by Selenium against a real
fleet (four regions, the control plane serving /console, edges routing on what it writes). Each test signs
in with a real token and works the page as an operator or viewer would; each view's screenshots (1280x800
and a phone's 390x844) go to a temporary folder, or to CONSOLE_SHOTS when set (`CONSOLE_SHOTS=docs/console`
writes the docs' pictures), so a test run leaves the tree as it was."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn

from tests.fleet import Fleet, ServerFactory, start_fleet, wait_for
from tests.geodb import CLIENT_IP

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or DRIVER is None,
        reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
    ),
]
SHOTS = Path(os.environ.get("CONSOLE_SHOTS") or Path(tempfile.gettempdir()) / "meridian-console-shots")
CHAT = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(tmp_path, serve, geo_db=geo_db, auth=True, sim_kwargs={"ttft_ms": 1.0})
    try:
        yield f
    finally:
        await f.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    """Selenium blocks: each step runs in a thread, so the fleet sharing this event loop keeps serving."""
    return await asyncio.to_thread(fn, *args)


def until(driver: Any, condition: Callable[[Any], Any], timeout: float = 5.0, what: str = "") -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(  # the live views re-render as news comes: an element read may be replaced
        driver, timeout, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(condition, message=what)


def sign_in(driver: Any, url: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/console")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
    until(driver, lambda d: d.find_element(By.ID, "live").text == "live", 10, "the live stream")
    until(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sites .site")) == 4, 5, "four sites")


def view(driver: Any, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f'nav button[data-view="{name}"]').click()
    until(driver, lambda d: d.find_element(By.ID, f"view-{name}").is_displayed(), 2, f"the {name} view")


def card(driver: Any, region: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'#cards [data-region="{region}"]')


def set_dial(driver: Any, region: str, value: int, reason: str) -> None:
    """Moves the dial with the keyboard (Home, then Right 5 at a time) and applies it with a reason."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    c = card(driver, region)
    dial = c.find_element(By.CSS_SELECTOR, ".dial")
    dial.send_keys(Keys.HOME)
    for _ in range(value // 5):
        dial.send_keys(Keys.ARROW_RIGHT)
    c.find_element(By.CSS_SELECTOR, ".reason").send_keys(reason)
    c.find_element(By.CSS_SELECTOR, ".apply").click()


def severe(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


async def served_by(fleet: Fleet, key: str, edge: str, city: str) -> str | None:
    headers = {"X-Forwarded-For": CLIENT_IP[city], "Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(fleet.edge_url(edge) + "v1/chat/completions", json=CHAT, headers=headers) as r,
    ):
        await r.read()
        return r.headers.get("X-Meridian-Region")


def shoot(driver: Any, name: str) -> None:
    """The view as it is, at the desktop size and at a phone's (the docs' pictures with CONSOLE_SHOTS)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.set_window_size(1280, 800)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(SHOTS / f"{name}.png"))
    driver.set_window_size(390, 844)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(SHOTS / f"{name}-phone.png"))
    driver.set_window_size(1280, 800)


def accessibility(driver: Any) -> list[str]:
    """axe-core's serious and critical violations on the page as it is."""
    from axe_selenium_python import Axe

    axe = Axe(driver)
    axe.inject()
    found = axe.run()
    return [
        f"{v['id']}: {v['help']} ({len(v['nodes'])} nodes)"
        for v in found["violations"]
        if v.get("impact") in ("serious", "critical")
    ]


async def test_the_console_loads_clean_shows_every_region_and_each_view_is_accessible(
    fleet: Fleet, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    _, key = await fleet.tenant_key()
    for _ in range(3):  # London's clients, served in Dublin: a flow on the map
        assert await served_by(fleet, key, "eu-west-1", "london") == "eu-west-1"
    await run(sign_in, browser, fleet.admin_url, fleet.operator_token)

    def flow_drawn(d: Any) -> bool:
        rows = d.find_elements(By.CSS_SELECTOR, '#flows-table tr[data-flow="EU>eu-west-1"]')
        return bool(rows) and bool(d.find_elements(By.CSS_SELECTOR, "#flows path.flow"))

    await run(until, browser, flow_drawn, 5.0, "the flow from Europe's clients to eu-west-1")
    await run(view, browser, "tenants")

    def used_by_model(d: Any) -> bool:  # the tenant's three answers, by the model it used
        return any("sim-llm" in r.text for r in d.find_elements(By.CSS_SELECTOR, "#by-model tbody tr"))

    await run(until, browser, used_by_model, 8.0, "the tenant's use by model")
    await run(view, browser, "explain")
    await run(lambda: browser.find_element(By.CSS_SELECTOR, "#explain-form button[type=submit]").click())

    def steps_shown(d: Any) -> bool:  # the replica choice, step by step, at the eu-west-1 edge
        found = d.find_elements(By.CSS_SELECTOR, '#explained [data-edge="eu-west-1"] ol.steps li')
        return any(li.text.startswith("picker:") for li in found)

    await run(until, browser, steps_shown, 5.0, "the replica choice's steps")
    broken: list[str] = []
    for name in ("map", "regions", "explain", "active", "runs", "audit", "tenants"):
        await run(view, browser, name)
        broken += [f"{name}: {v}" for v in await run(accessibility, browser)]
        await run(shoot, browser, name)
    assert not broken, broken
    assert await run(severe, browser) == []  # no console errors, no CSP violation
    await run(view, browser, "regions")

    def replicas_listed(d: Any) -> bool:
        from selenium.webdriver.common.by import By

        rows = card(d, "eu-west-1").find_elements(By.CSS_SELECTOR, ".replicas tbody tr")
        return len(rows) == 2 and all("up" in r.text for r in rows)

    await run(until, browser, replicas_listed, 3.0, "eu-west-1's two replicas, up")
    headers = await run(lambda: browser.execute_script("return document.contentType"))
    assert headers == "text/html"


async def test_the_tenants_view_shows_use_that_arrives_while_it_is_open(fleet: Fleet, browser: Any) -> None:
    """An operator watching the tenants view sees a tenant's use as the edges report it, without leaving
    the view (its usage tables refresh while it is shown)."""
    from selenium.webdriver.common.by import By

    _, key = await fleet.tenant_key()
    await run(sign_in, browser, fleet.admin_url, fleet.operator_token)
    await run(view, browser, "tenants")
    rows = await run(lambda: browser.find_elements(By.CSS_SELECTOR, "#by-model tbody tr"))
    assert not any("sim-llm" in r.text for r in rows)  # nothing used yet when the view opened
    for _ in range(3):
        assert await served_by(fleet, key, "eu-west-1", "london") == "eu-west-1"

    def used_by_model(d: Any) -> bool:
        return any("sim-llm" in r.text for r in d.find_elements(By.CSS_SELECTOR, "#by-model tbody tr"))

    await run(until, browser, used_by_model, 12.0, "the tenant's use, arrived while the view was open")


async def test_a_dial_to_zero_moves_london_off_eu_west_1_within_2_s_and_is_audited(
    fleet: Fleet, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    _, key = await fleet.tenant_key()
    assert await served_by(fleet, key, "eu-west-1", "london") == "eu-west-1"
    await run(sign_in, browser, fleet.admin_url, fleet.operator_token)
    await run(view, browser, "explain")
    await run(lambda: browser.find_element(By.CSS_SELECTOR, "#explain-form button[type=submit]").click())

    def london_at(region: str) -> Callable[[Any], bool]:
        def answered(d: Any) -> bool:  # the eu-west-1 edge's explainer answer for a London client
            found = d.find_elements(By.CSS_SELECTOR, '#explained [data-edge="eu-west-1"]')
            return bool(found) and found[0].get_attribute("data-choice") == region

        return answered

    await run(until, browser, london_at("eu-west-1"), 5.0, "the explainer: London at eu-west-1")
    whatif = await run(browser.find_element, By.ID, "explain-whatif")
    await run(whatif.send_keys, "eu-west-1=0")
    await run(lambda: browser.find_element(By.CSS_SELECTOR, "#explain-form button[type=submit]").click())

    def imagined_elsewhere(d: Any) -> bool:  # the what-if: elsewhere, while the answer in force stays
        found = d.find_elements(By.CSS_SELECTOR, '#explained [data-edge="eu-west-1"]')
        return bool(found) and found[0].get_attribute("data-what-if") not in ("", "eu-west-1")

    await run(
        until, browser, imagined_elsewhere, 5.0, "the what-if: London elsewhere if eu-west-1's dial were 0"
    )
    assert await run(london_at("eu-west-1"), browser)
    await run(view, browser, "regions")
    started = time.monotonic()
    await run(set_dial, browser, "eu-west-1", 0, "console test: move London off eu-west-1")
    await run(view, browser, "explain")
    await run(until, browser, lambda d: not london_at("eu-west-1")(d), 2.0, "the explainer's answer changed")
    print(f"\nthe explainer's answer for London changed {time.monotonic() - started:.2f} s after the click")

    async def moved() -> bool:
        return await served_by(fleet, key, "eu-west-1", "london") not in ("eu-west-1", None)

    await wait_for(moved, timeout=2.0, interval=0.05, what="London served elsewhere")
    print(
        f"\ndial 0 in the console: London served elsewhere {time.monotonic() - started:.2f} s after the click"
    )
    await run(view, browser, "audit")

    def audited(d: Any) -> bool:
        from selenium.webdriver.common.by import By

        rows = d.find_elements(By.CSS_SELECTOR, "#audit tbody tr")
        return any("move London off eu-west-1" in r.text and "weight=0" in r.text for r in rows)

    await run(until, browser, audited, 3.0, "the audit row")
    await run(view, browser, "runs")

    def every_edge_applied(d: Any) -> str | None:
        from selenium.webdriver.common.by import By

        for row in d.find_elements(By.CSS_SELECTOR, "#runs tbody tr"):
            cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "th, td")]
            if cells[0] == "eu-west-1" and cells[1] == "switch" and cells[5].startswith("4/4"):
                return str(cells[6])
        return None

    recovery = await run(until, browser, every_edge_applied, 5.0, "the switch run: every edge applied it")
    print(f"switch run: every edge applied the dial 0 within {recovery} of the click")
    assert float(recovery.removesuffix(" s")) < 2.0

    def traffic_stopped(d: Any) -> str | None:
        from selenium.webdriver.common.by import By

        for row in d.find_elements(By.CSS_SELECTOR, "#runs tbody tr"):
            cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "th, td")]
            if cells[0] == "eu-west-1" and cells[7] != "—":
                return str(cells[7])
        return None

    zero = await run(until, browser, traffic_stopped, 8.0, "the switch run: the region's traffic at 0")
    print(f"switch run: eu-west-1's traffic reached 0 at {zero} of the click")


async def test_a_one_minute_drain_walks_the_dial_down_and_traffic_follows(fleet: Fleet, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _, key = await fleet.tenant_key()
    await run(sign_in, browser, fleet.admin_url, fleet.operator_token)
    await run(view, browser, "regions")
    c = await run(card, browser, "eu-west-1")
    await run(
        lambda: c.find_element(By.CSS_SELECTOR, ".reason").send_keys("console test: drain over a minute")
    )
    await run(lambda: c.find_element(By.CSS_SELECTOR, ".start-drain").click())
    await run(
        until,
        browser,
        lambda d: "walks to 0 in" in c.find_element(By.CSS_SELECTOR, ".countdown").text,
        3.0,
        "countdown",
    )

    async def walked_to_70() -> bool:
        status, region = await fleet.admin("GET", "/v1/regions/eu-west-1")
        return status == 200 and region["weight"] <= 70

    await wait_for(walked_to_70, timeout=25, interval=0.5, what="the dial walking down to 70")
    served = [await served_by(fleet, key, "eu-west-1", "london") for _ in range(60)]
    share = served.count("eu-west-1") / len(served)
    print(f"\ndrain over 60 s: dial at 70 or below after ~18 s, London's share at eu-west-1 {share:.0%}")
    assert share < 0.9, served  # the traffic follows the dial (100 % before the drain)
    _, page = await fleet.admin("GET", "/v1/audit?region=eu-west-1")
    assert any(e["action"].startswith("drain countdown") for e in page["entries"]), page


async def test_a_viewer_sees_everything_and_can_change_nothing(fleet: Fleet, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    await run(sign_in, browser, fleet.admin_url, fleet.viewer_token)
    await run(view, browser, "regions")
    c = await run(card, browser, "eu-west-1")
    controls = await run(lambda: c.find_elements(By.CSS_SELECTOR, "input, button"))
    assert controls and all([not await run(x.is_enabled) for x in controls])
    forged = await run(
        browser.execute_script,
        """return fetch('/v1/regions/eu-west-1', {method: 'PATCH', headers: {'Authorization':
           'Bearer ' + sessionStorage.getItem('meridian-token'), 'Content-Type': 'application/json'},
           body: JSON.stringify({weight: 0, reason: 'forged'})}).then(r => r.status)""",
    )
    assert forged == 403
    status, region = await fleet.admin("GET", "/v1/regions/eu-west-1")
    assert status == 200 and region["weight"] == 100


async def test_a_stale_edit_shows_the_conflict_and_the_current_value(fleet: Fleet, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    await run(sign_in, browser, fleet.admin_url, fleet.operator_token)
    await run(view, browser, "regions")
    c = await run(card, browser, "us-east-1")
    await run(lambda: c.find_element(By.CSS_SELECTOR, ".dial").send_keys(Keys.ARROW_LEFT))  # editing: 95
    status, _ = await fleet.admin(
        "PATCH", "/v1/regions/us-east-1", body={"weight": 40, "reason": "meanwhile"}
    )
    assert status == 200
    await run(lambda: c.find_element(By.CSS_SELECTOR, ".reason").send_keys("stale edit"))
    await run(lambda: c.find_element(By.CSS_SELECTOR, ".apply").click())
    result = await run(
        until,
        browser,
        lambda d: "Conflict" in c.find_element(By.CSS_SELECTOR, ".result").text and c,
        3.0,
        "conflict",
    )
    text = await run(lambda: result.find_element(By.CSS_SELECTOR, ".result").text)
    assert "dial 40" in text, text
    status, region = await fleet.admin("GET", "/v1/regions/us-east-1")
    assert region["weight"] == 40  # the stale edit did not land


async def test_the_console_reconnects_after_a_control_plane_restart(fleet: Fleet, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    await run(sign_in, browser, fleet.admin_url, fleet.operator_token)
    server, task = fleet.uvicorn_server, fleet.uvicorn_task
    assert server is not None and task is not None
    server.should_exit = True
    await task
    await run(until, browser, lambda d: d.find_element(By.ID, "live").text == "reconnecting…", 5.0, "offline")
    config = server.config
    fleet.uvicorn_server = uvicorn.Server(config)
    fleet.uvicorn_task = asyncio.create_task(fleet.uvicorn_server.serve())
    await run(until, browser, lambda d: d.find_element(By.ID, "live").text == "live", 10.0, "live again")
    status, _ = await fleet.admin(
        "PATCH", "/v1/regions/ap-southeast-1", body={"weight": 35, "reason": "after"}
    )
    assert status == 200

    def shows_35(d: Any) -> bool:
        row = d.find_element(By.CSS_SELECTOR, '#map-table tr[data-region="ap-southeast-1"]')
        return bool(row.find_elements(By.TAG_NAME, "td")[1].text == "35")

    await run(until, browser, shows_35, 5.0, "the change after the restart")


async def test_a_long_stream_shows_in_active_requests_and_an_operators_cancel_ends_it(
    fleet: Fleet, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    _, key = await fleet.tenant_key()
    for region in fleet.sims:
        for rep in fleet.sims[region]:
            sim = fleet.sim(region, rep)
            sim.model = type(sim.model)(ttft_ms=1, per_token_ms=100)  # 300 tokens: a 30 s stream
    await run(sign_in, browser, fleet.admin_url, fleet.operator_token)
    await run(view, browser, "active")
    headers = {"X-Forwarded-For": CLIENT_IP["london"], "Authorization": f"Bearer {key}"}
    body = {**CHAT, "stream": True, "max_tokens": 300}
    async with (
        aiohttp.ClientSession() as s,
        s.post(fleet.edge_url("eu-west-1") + "v1/chat/completions", json=body, headers=headers) as r,
    ):
        rid = r.headers["x-request-id"]
        await r.content.readuntil(b"\n\n")  # streaming
        started = time.monotonic()

        def listed(d: Any) -> Any:
            rows = d.find_elements(By.CSS_SELECTOR, f'#active tbody tr[data-request="{rid}"]')
            return rows[0] if rows and "stream" in rows[0].text and "eu-west-1" in rows[0].text else None

        row = await run(until, browser, listed, 5.0, "the stream in Active requests")
        await run(lambda: row.find_element(By.TAG_NAME, "button").click())
        with pytest.raises(aiohttp.ClientPayloadError):
            async with asyncio.timeout(5):
                await r.read()  # cut short, not 30 s of tokens
        ended = time.monotonic() - started
    print(f"\nan operator's cancel ended the stream {ended:.1f} s after it was listed (its tokens: 30 s)")
    assert ended < 5

    def gone(d: Any) -> bool:
        return not d.find_elements(By.CSS_SELECTOR, f'#active tbody tr[data-request="{rid}"]')

    await run(until, browser, gone, 5.0, "the cancelled request gone from the list")
    sims = [fleet.sim(region, rep) for region in fleet.sims for rep in fleet.sims[region]]

    async def upstream_let_go() -> bool:
        return sum(len(x.engine.running) + len(x.engine.waiting) for x in sims) == 0

    await wait_for(upstream_let_go, timeout=3, what="the region's engine to drop the cancelled request")
