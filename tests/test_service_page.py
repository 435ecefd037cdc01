"""The onboarding page at GET / in a real browser (headless Chromium through selenium).

Rates three movies, checks that recommendations appear without the rated movies and change
after another rating, at a phone's width; then takes a screenshot at desktop width (written to
``docs/onboarding.png`` when ``MELU_UPDATE_SCREENSHOT=1``; ``MELU_SCREENSHOT_MODEL=runs/NAME``
serves that bundle instead of the small test one). Chromium and chromedriver come
from Debian's ``chromium`` and ``chromium-driver`` packages, installed by ``make test``
(``.ci/install-browser``); without them the test skips, unless ``MELU_REQUIRE_BROWSER=1``
(CI sets it) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import serve_in_thread

from melu.serving import Recommender
from service.app import create_app, model_version
from service.deps import Loaded
from service.settings import Settings

pytest_plugins = ["service_fixtures"]  # bundle_path, recommender

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
PHONE = 390  # CSS pixels: a common phone width


def test_page_is_served_with_no_external_assets(
    bundle_path: Path, recommender: Recommender
) -> None:
    loaded = Loaded(recommender, model_version(recommender), "ml-100k")
    with TestClient(create_app(Settings(model=bundle_path, reload_interval=0), loaded)) as client:
        page = client.get("/")
        script = client.get("/static/app.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    for text in (page.text, script.text):
        assert "http://" not in text and "https://" not in text  # same origin only
    assert '<meta name="viewport"' in page.text and 'lang="en"' in page.text


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or DRIVER is None:
        if os.environ.get("MELU_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium/chromedriver missing: run .ci/install-browser (make test does)")
        pytest.skip("chromium and chromedriver are not installed (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=800,1600")
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    metrics = {"width": PHONE, "height": 1500, "deviceScaleFactor": 1, "mobile": True}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)  # a phone's screen
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def recommended(driver: Any) -> list[int]:
    from selenium.webdriver.common.by import By

    return [
        int(li.get_attribute("data-item-id"))
        for li in driver.find_elements(By.CSS_SELECTOR, "#recs li")
    ]


def test_rate_three_movies_and_see_recommendations_update(
    browser: Any, bundle_path: Path, recommender: Recommender, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    other = os.environ.get("MELU_SCREENSHOT_MODEL")  # a trained bundle for docs/onboarding.png
    if other:
        recommender = Recommender.from_bundle(other, threads=1)
    loaded = Loaded(recommender, model_version(recommender), "ml-100k")
    app = create_app(Settings(model=bundle_path, reload_interval=0, access_log=False), loaded)
    wait = WebDriverWait(browser, 30)
    with serve_in_thread(app) as url:
        browser.get(url + "/")
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#onboarding li")))
        wait.until(lambda d: len(recommended(d)) == 10)  # features-only ranking first
        asked = browser.find_elements(By.CSS_SELECTOR, "#onboarding li")
        assert len(asked) == 12 and "(" in asked[0].text  # title (year)
        ids = [int(li.get_attribute("data-item-id")) for li in asked]

        def rate(item_id: int, stars: int, count: int) -> list[int]:
            browser.find_element(By.CSS_SELECTOR, f"label[for='ask-{item_id}-{stars}']").click()
            wait.until(
                lambda d: d.find_element(By.ID, "recs").get_attribute("data-ratings") == str(count)
            )
            return recommended(browser)

        rate(ids[0], 5, 1)
        rate(ids[1], 4, 2)
        after_three = rate(ids[2], 1, 3)
        assert len(after_three) == 10
        assert not set(after_three) & set(ids[:3])  # rated movies are left out
        scores = browser.find_elements(By.CSS_SELECTOR, "#recs li .score")
        assert all("★" in s.text for s in scores)

        # keyboard: focus the fourth movie's 5-star radio and move to 4 stars with an arrow
        radio = browser.find_element(By.ID, f"ask-{ids[3]}-5")
        browser.execute_script("arguments[0].focus()", radio)
        radio.send_keys(Keys.SPACE)
        wait.until(lambda d: d.find_element(By.ID, "recs").get_attribute("data-ratings") == "4")
        after_four = recommended(browser)
        assert after_four != after_three and ids[3] not in after_four

        # the catalog search rates a movie that was not offered (nor rated yet)
        search = browser.find_element(By.ID, "search")
        search.send_keys("Star")
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results li.movie")))
        found = next(
            li
            for li in browser.find_elements(By.CSS_SELECTOR, "#results li.movie")
            if int(li.get_attribute("data-item-id")) not in ids
        )
        found_id = int(found.get_attribute("data-item-id"))
        found.find_element(By.CSS_SELECTOR, f"label[for='found-{found_id}-5']").click()
        wait.until(lambda d: d.find_element(By.ID, "recs").get_attribute("data-ratings") == "5")
        assert found_id not in recommended(browser)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#rated li.movie")) == 5

        width = browser.execute_script("return document.documentElement.scrollWidth")
        viewport = browser.execute_script("return window.innerWidth")
        wide = browser.execute_script(
            "return [...document.querySelectorAll('body *')]"
            ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)"
            ".slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className)"
        )
        assert viewport == PHONE and width <= viewport, (
            width,
            viewport,
            wide,
        )  # no sideways scrolling at phone width
        desktop = {"width": 1100, "height": 1000, "deviceScaleFactor": 1, "mobile": False}
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", desktop)
        browser.execute_script("window.scrollTo(0, 0)")
        shot = tmp_path / "onboarding.png"
        assert browser.save_screenshot(str(shot))  # the README's picture: both columns
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("MELU_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(shot, ROOT / "docs" / "onboarding.png")
