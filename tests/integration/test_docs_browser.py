"""``/docs`` in a real browser (headless Chromium through selenium and Debian's chromedriver): every
operation of the OpenAPI document is listed, nothing comes from another host, and "Authorize"
plus "Try it out" on ``GET /v1/models`` answers 200 with the key."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import Stack
from webapp.docs import openapi_document

pytestmark = pytest.mark.integration
WAIT = 30  # seconds for the page to do each step: Chromium on 2 busy cores is slow to start


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail(
            "Debian's chromium and chromium-driver are needed (scripts/bootstrap.sh --dev installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def documented_operations() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch")
    }


def shown_operations(driver: Any) -> set[tuple[str, str]]:
    script = """
        return Array.from(document.querySelectorAll('.opblock')).map(block => [
            block.querySelector('.opblock-summary-method').textContent.trim(),
            block.querySelector('.opblock-summary-path').getAttribute('data-path'),
        ]);
    """
    return {tuple(item) for item in driver.execute_script(script)}


def test_docs_list_every_operation_and_try_it_out_works(
    stack: Stack, api_url: str, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT)
    browser.get(f"{api_url}/docs")
    try:
        expected = documented_operations()
        wait.until(lambda d: len(shown_operations(d)) >= len(expected))
        assert shown_operations(browser) == expected
        assert "Unable to render" not in browser.find_element(By.TAG_NAME, "body").text
        resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert resources and all(url.startswith(api_url) for url in resources), resources

        # Authorize with the bearer key.
        browser.find_element(By.CSS_SELECTOR, ".auth-wrapper .authorize").click()
        dialog = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".dialog-ux .modal-ux")))
        dialog.find_element(By.CSS_SELECTOR, "input").send_keys(stack.user_key)
        dialog.find_element(By.CSS_SELECTOR, ".auth-btn-wrapper .authorize").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".auth-btn-wrapper .btn-done")))
        dialog.find_element(By.CSS_SELECTOR, ".auth-btn-wrapper .btn-done").click()

        # GET /v1/models: open, "Try it out", "Execute".
        block = browser.find_element(
            By.XPATH,
            "//div[contains(@class,'opblock-get')][.//*[contains(@class,'opblock-summary-path')"
            " and @data-path='/v1/models']]",
        )
        block.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
        wait.until(lambda d: block.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
        block.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
        wait.until(lambda d: block.find_elements(By.CSS_SELECTOR, ".execute"))
        block.find_element(By.CSS_SELECTOR, ".execute").click()
        status = wait.until(
            lambda d: block.find_elements(
                By.CSS_SELECTOR, ".live-responses-table .response .response-col_status"
            )
        )
        assert status[0].text.strip().startswith("200"), status[0].text
        body = block.find_element(By.CSS_SELECTOR, ".live-responses-table .response-col_description pre").text
        assert '"total"' in body and "digits" in body, body[:500]
        curl = block.find_element(By.CSS_SELECTOR, ".curl-command").text
        assert f"Authorization: Bearer {stack.user_key}" in curl, curl
    except Exception:
        browser.save_screenshot(str(tmp_path / "docs.png"))  # kept under pytest's tmp dir for a look
        raise
