"""The status page (GET /) and the API docs (GET /docs) in a real headless browser: Debian's
chromium driven by Selenium through Debian's chromium-driver, against real processes."""
from __future__ import annotations

import os
import shutil

import pytest

from featurestore import Client

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
WAIT_S = 15


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if not (chromium and driver and webdriver):
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium, chromium-driver (.ci/run installs them) and selenium ([test])")
        pytest.skip("no headless browser here: apt-get install -y chromium chromium-driver; pip install selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    drv = webdriver.Chrome(service=Service(driver), options=options)  # no Selenium Manager download
    yield drv
    drv.quit()


def _wait(browser, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(browser, WAIT_S, poll_frequency=0.1).until(lambda b: condition(b), message=what)


def _texts(browser, css: str) -> list[str]:
    """The text of each element matching ``css``, read in one script (the tables are redrawn as we look)."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText.trim())", css)


def _route_total(browser, route: str) -> float | None:
    cells = _texts(browser, f'#routes tr[data-route="{route}"] td.total')
    return float(cells[0].replace(",", "")) if cells and cells[0] not in ("", "–") else None


def test_status_page_shows_shards_counts_that_move_and_a_lookup(browser, cluster):
    from selenium.webdriver.common.by import By
    with Client(cluster.url) as fs:
        fs.put_features("page:user/1", {"ctr": 0.25, "clicks": 7}, "2026-01-01T00:00:00Z")
        fs.put("page:user/1", "label", "gold")
        browser.get(cluster.url + "/?refresh_ms=250")
        assert browser.title == "feature store status"
        rows = _wait(browser, lambda b: len(_texts(b, "#shards tbody tr")) == 2 and _texts(b, "#shards tbody tr"),
                     "both shards in the table")
        assert [r.split()[:2] for r in rows] == [["0", "ready"], ["1", "ready"]]
        assert all(len(r.split("\t")) == 6 for r in rows)  # entities, values, memory, log
        route = "GET /features/{entity_id}"
        fs.get_entity("page:user/1")
        before = _wait(browser, lambda b: _route_total(b, route), "the whole-entity GET row")
        for _ in range(25):
            fs.get_entity("page:user/1")
        after = _wait(browser, lambda b: (_route_total(b, route) or 0) >= before + 25 and _route_total(b, route),
                      "the request count to move")
        assert after >= before + 25
        _wait(browser, lambda b: _texts(b, f'#routes tr[data-route="{route}"] td.p99')[0] not in ("", "–") or
              None, "a p99 for the route")

    box = browser.find_element(By.ID, "entity")
    box.clear()
    box.send_keys("page:user/1")
    browser.find_element(By.CSS_SELECTOR, "#lookup button").click()
    _wait(browser, lambda b: len(_texts(b, "#features tbody tr")) == 3, "the entity's three features")
    names = browser.execute_script("return Array.from(document.querySelectorAll('#features tbody tr'), "
                                   "r => [r.dataset.name, Array.from(r.cells, c => c.innerText)])")
    names = dict(names)
    assert set(names) == {"ctr", "clicks", "label"}
    cells = names.__getitem__
    assert cells("ctr")[:3] == ["ctr", "0.25", "2026-01-01T00:00:00Z"]
    assert cells("ctr")[3].endswith(" d")  # months old, in days
    assert cells("label")[1] == '"gold"' and cells("label")[3].endswith(" s")  # written just now
    assert "3 features of page:user/1" in browser.find_element(By.ID, "lookup-status").text

    box.clear()
    box.send_keys("page:nobody")
    browser.find_element(By.CSS_SELECTOR, "#lookup button").click()
    _wait(browser, lambda b: "No features found" in b.find_element(By.ID, "lookup-status").text, "the 404 detail")


def test_docs_render_every_operation_offline(browser, cluster):
    from selenium.webdriver.common.by import By
    with Client(cluster.url) as fs:
        spec = fs.openapi()
    operations = sum(1 for ops in spec["paths"].values() for m in ops if m != "parameters")
    browser.get(cluster.url + "/docs")
    _wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, ".opblock")) == operations,
          f"Swagger UI to show all {operations} operations")
    assert "shardstore feature store" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
