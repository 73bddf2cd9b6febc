"""The web console in a real browser: Debian's chromium, driven through chromium-driver
by selenium, against the real HTTP server, PostgreSQL and model.

Without chromium or chromium-driver the tests skip and say why (``make test`` installs
both when it runs as root); under CI (``CI`` set) a missing browser fails them instead.
``INDEXER_SCREENSHOTS=DIR`` saves what they see as ``DIR/console-*.png`` (the set in
docs/images comes from such a run).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from indexer.db.connect import Connection
from indexer.embedding import Embedder
from indexer.settings import Settings
from tests.console_data import NEEDLE, SOURCE, ConsoleData, note_text, populate
from tests.helpers import CORPUS, cli_env, run_cli, wait_until
from tests.integration.test_http import Api, samples, serve

TOKEN = "browser-test-token"
#: Seconds to wait for the page to show what the server has (a loaded machine is slow).
WAIT = 30
#: Debian's names for the browser and its driver.
CHROMIUM, DRIVER = "chromium", "chromedriver"
#: What the page shows where it has no value (an en dash).
NO_VALUE = "\u2013"


def _missing() -> str | None:
    absent = [name for name in (CHROMIUM, DRIVER) if shutil.which(name) is None]
    if not absent:
        return None
    return (
        f"the web console's browser tests need Debian's chromium and chromium-driver "
        f"({' and '.join(absent)} not found): apt-get install -y chromium chromium-driver "
        "(`make test` installs them when run as root)"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    options = Options()
    options.binary_location = str(shutil.which(CHROMIUM))
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root, chromium runs only without its sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--window-size=1280,900",
        "--force-device-scale-factor=1",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    # The driver's path given: selenium looks nothing up and downloads nothing.
    service = Service(executable_path=str(shutil.which(DRIVER)))
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except WebDriverException as exc:
        pytest.fail(f"chromium did not start: {exc.msg}")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def guarded(settings: Settings, database: str, embedder: Embedder) -> Iterator[Api]:
    with serve(dataclasses.replace(settings, http_token=TOKEN), database, embedder) as api:
        yield api


@pytest.fixture
def data(conn: Connection, settings: Settings, embedder: Embedder) -> ConsoleData:
    return populate(conn, settings, embedder)


@dataclasses.dataclass
class Page:
    """The console open in the browser, at ``url``."""

    driver: WebDriver
    url: str

    def open(self) -> None:
        self.driver.get(self.url + "/")

    def find(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def shown(self, selector: str) -> bool:
        found = self.all(selector)
        return bool(found) and found[0].is_displayed()

    def text(self, selector: str) -> str:
        found = self.all(selector)
        return found[0].text if found else ""

    def value(self, field: str) -> str | None:
        """The raw value behind an overview figure (None while it has none)."""
        return self.find(f"dd[data-field={field}]").get_attribute("data-value")

    def figures(self) -> dict[str, str | None]:
        return {
            str(dd.get_attribute("data-field")): dd.get_attribute("data-value")
            for dd in self.all("dd[data-field]")
        }

    def log_in(self, token: str) -> None:
        field = self.find("#token")
        field.clear()
        field.send_keys(token)
        self.find("#login button[type=submit]").click()

    def connect(self) -> None:
        """Open the page, give it the token when it asks, and wait for its data."""
        self.open()
        assert wait_until(lambda: self.shown("#login"), WAIT)
        self.log_in(TOKEN)
        assert wait_until(self.loaded, WAIT)

    def loaded(self) -> bool:
        """Overview, chart and failures all read."""
        return (
            self.value("backlog") not in (None, "")
            and bool(self.all("#chart svg polyline.rows"))
            and not self.text("#failed-rows").startswith(NO_VALUE)
        )

    def screenshot(self, name: str, selector: str | None = None) -> None:
        folder = os.environ.get("INDEXER_SCREENSHOTS")
        if not folder:
            return
        path = Path(folder) / f"console-{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if selector is None:
            self.driver.execute_script("window.scrollTo(0, 0)")
            assert self.driver.save_screenshot(str(path))
        else:
            element = self.find(selector)
            self.driver.execute_script("arguments[0].scrollIntoView()", element)
            assert element.screenshot(str(path))


@pytest.fixture
def page(browser: WebDriver, guarded: Api) -> Page:
    return Page(browser, guarded.server.url)


def test_the_page_asks_for_the_token_and_shows_no_data_until_it_is_right(
    page: Page, data: ConsoleData
) -> None:
    page.open()
    assert wait_until(lambda: page.shown("#login"), WAIT)
    assert page.text("#login-message") == "This API needs a token."
    assert set(page.figures().values()) == {None}
    assert page.text("#source-rows") == NO_VALUE == page.text("#failed-rows")
    assert not page.all("#chart svg")
    page.screenshot("token")

    page.log_in("not-the-token")
    assert wait_until(lambda: page.text("#login-message") == "The token was not accepted.", WAIT)
    assert set(page.figures().values()) == {None}

    page.log_in(TOKEN)
    assert wait_until(page.loaded, WAIT)
    assert not page.shown("#login")
    assert page.driver.execute_script("return sessionStorage.getItem('indexer.token')") == TOKEN
    page.open()  # the tab keeps the token: a reload reads the data at once
    assert wait_until(page.loaded, WAIT)
    assert not page.shown("#login")

    page.find("#forget").click()
    assert wait_until(lambda: page.shown("#login"), WAIT)
    assert set(page.figures().values()) == {None}
    assert page.driver.execute_script("return sessionStorage.getItem('indexer.token')") is None


def status_json(env: dict[str, str]) -> dict[str, Any]:
    result = run_cli(["status", "--json"], env)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def words(text: str) -> str:
    """``text`` with its runs of whitespace made one space (as a browser shows it)."""
    return " ".join(text.split())


def number(value: str | None) -> float | None:
    return None if value in (None, "") else float(value)


def test_the_numbers_are_those_of_status_json_and_metrics(
    page: Page, guarded: Api, data: ConsoleData, database: str, model_cache: Path
) -> None:
    page.connect()
    env = cli_env(database, model_cache)
    # The rates, the ETA and the oldest row's age move with the clock: the page is read
    # between two readings of `indexer status --json`, and each lies between them.
    before = status_json(env)
    page.open()  # the token is kept: the page reads its data at once
    assert wait_until(page.loaded, WAIT)
    shown = {field: number(value) for field, value in page.figures().items()}
    after = status_json(env)
    moving = {"rows_per_second", "passages_per_second", "eta", "oldest_pending_age"}
    assert set(shown) > moving
    for field, value in shown.items():
        if field not in moving:
            assert value == before[field] == after[field], field
    assert shown["backlog"] == 3 and shown["failed"] == 1 and shown["active_workers"] == 1
    for field in moving:
        got, low, high = shown[field], before[field], after[field]
        assert None not in (got, low, high), (field, got, low, high)
        low, high = min(low, high), max(low, high)
        assert low - 1 <= got <= high + 1, (field, got, low, high)  # ETA: whole seconds
    expected = after
    metrics = samples(
        guarded.client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text
    )
    assert metrics[("indexer_backlog_rows", frozenset())] == shown["backlog"]
    assert metrics[("indexer_failed_rows", frozenset())] == shown["failed"]

    [listed] = [s for s in expected["sources"] if s["source"] == SOURCE]
    row = page.find(f'#source-rows tr[data-source="{SOURCE}"]')
    cells = {
        str(td.get_attribute("data-field")): number(td.get_attribute("data-value"))
        for td in row.find_elements(By.CSS_SELECTOR, "td[data-field]")
    }
    for field in ("documents", "indexed", "pending", "in_flight", "failed", "chunks"):
        assert cells[field] == listed[field], field
    assert cells["coverage"] == pytest.approx(listed["indexed"] / listed["documents"])
    assert "66.7 %" in row.text  # 2 of 3 documents indexed

    # The chart: a point a minute for the last hour, the busy minutes above the axis.
    points = page.find("#chart svg polyline.rows").get_attribute("points") or ""
    pairs = [tuple(map(float, p.split(","))) for p in points.split()]
    assert len(pairs) == 60
    assert len({y for _, y in pairs}) > 5
    assert pairs == sorted(pairs, key=lambda p: p[0])
    assert "rows/min" in page.text("#chart .legend")
    page.screenshot("overview")
    page.screenshot("throughput", "#throughput")


def test_search_highlights_the_passage_and_retry_requeues_failures(
    page: Page, data: ConsoleData, conn: Connection
) -> None:
    page.connect()

    # Rows: the nearest row first, with its score and metadata.
    page.find("#query").send_keys("a sleepy kitten in the sunshine")
    page.find("#search-form button[type=submit]").click()
    assert wait_until(lambda: page.text("#search-message").endswith("found."), WAIT)
    assert page.text("#search-message") == f"{len(page.all('#results li'))} rows found."
    first = page.find("#results li")
    assert CORPUS["cat"] in first.text and '{"topic":"cat"}' in first.text

    # Documents: the long note, its best passage marked inside the text around it.
    page.find("#query").clear()
    page.find("#query").send_keys("who feeds the seagulls by the lighthouse at dawn")
    page.find("#group option[value=document]").click()
    page.find("#k").clear()
    page.find("#k").send_keys("3")
    page.find("#search-form button[type=submit]").click()
    assert wait_until(lambda: bool(page.all("#results li .passage .context")), WAIT)
    first = page.find("#results li")
    assert (first.get_attribute("data-source"), first.get_attribute("data-key")) == (
        SOURCE,
        data.needle_key,
    )
    mark = first.find_element(By.CSS_SELECTOR, ".passage mark")
    start, end = (int(mark.get_attribute(f"data-{side}") or -1) for side in ("start", "end"))
    assert start < data.needle_start + len(NEEDLE) and end > data.needle_start  # it holds some
    text = note_text()
    assert words(mark.text) == words(text[start:end])
    before, after = first.find_elements(By.CSS_SELECTOR, ".passage .context")
    assert words(text[:start]).endswith(words(before.text)) and before.text
    assert words(text[end:]).startswith(words(after.text)) and after.text
    assert f"{SOURCE} / key {data.needle_key}" in first.text and '{"lang":"en"}' in first.text
    assert f"characters {start}{NO_VALUE}{end}" in first.text
    page.screenshot("search", "#search")

    # Failures: the failed row and document with their errors; retry re-queues them.
    page.screenshot("failures", "#failures")
    page.find(f'button[data-retry-row="{data.failed_row}"]').click()

    def state(table: str, where: str, value: str) -> str | None:
        row = conn.execute(f"SELECT state FROM {table} WHERE {where} = %s", (value,)).fetchone()  # noqa: S608
        return None if row is None else str(row["state"])

    assert wait_until(lambda: state("chunks", "id", str(data.failed_row)) == "pending", WAIT)
    assert wait_until(lambda: page.text("#failed-rows") == "No failed rows.", WAIT)
    assert page.text("#retry-message") == f"Re-queued row {data.failed_row}."
    assert page.find(f'button[data-retry-source="{SOURCE}"]').is_displayed()  # all of them
    page.find(f'button[data-retry-document="{data.failed_document}"]').click()  # this one
    assert wait_until(
        lambda: state("source_documents", "doc_key", data.failed_document) == "pending", WAIT
    )
    assert wait_until(lambda: page.text("#failed-documents") == "No failed documents.", WAIT)
    assert page.text("#retry-message") == (
        f"Re-queued document {data.failed_document} of {SOURCE}."
    )
    assert wait_until(lambda: page.value("failed") == "0", WAIT)


def test_on_a_slow_link_the_assets_come_once_then_from_the_cache(
    page: Page, data: ConsoleData
) -> None:
    # About a 2G link: 400 ms each way, 32 KB/s down.
    page.driver.set_network_conditions(
        latency=400, download_throughput=32 * 1024, upload_throughput=16 * 1024
    )
    try:
        page.connect()
        first = resources(page)
        assert {name: size > 0 for name, size in first.items()} == {
            "console.js": True,
            "console.css": True,
        }
        page.open()  # the token is kept, so the data loads at once
        assert wait_until(page.loaded, WAIT)
        assert resources(page) == {"console.js": 0, "console.css": 0}  # from the cache
    finally:
        page.driver.delete_network_conditions()


def resources(page: Page) -> dict[str, int]:
    """Bytes the page's script and style sheet took over the network on this load."""
    entries = page.driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => [e.name, e.transferSize])"
    )
    return {
        name.rsplit("/", 1)[1].split("?")[0]: int(size)
        for name, size in entries
        if "/console/console." in name
    }


def test_without_a_token_configured_the_page_reads_at_once(
    browser: WebDriver, settings: Settings, database: str, embedder: Embedder
) -> None:
    with serve(settings, database, embedder) as api:
        page = Page(browser, api.server.url)
        page.open()
        assert wait_until(page.loaded, WAIT)
        assert not page.shown("#login") and not page.shown("#forget")
        assert page.value("backlog") == "0"
        assert page.text("#failed-rows") == "No failed rows."
