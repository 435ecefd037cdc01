"""The onboarding page at GET / in a real browser (headless Chromium through selenium).

Rates three movies, checks that recommendations appear without the rated movies and change
after another rating, at a phone's width; the stars as a keyboard radio group (arrows move,
Space/Enter rates, no request per arrow), the phone layout by element geometry (after the
first rating the first recommendation is on screen at 390×844, star targets ≥ 44 px), ranks,
genres and reasons, clear all, profile errors, and the offline message with Retry. The first
test takes a screenshot at desktop width (written to
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
    style = client.get("/static/app.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    for text in (page.text, script.text, style.text):
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
            browser.find_element(By.ID, f"ask-{item_id}-{stars}").click()
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

        # keyboard: focus the fourth movie's 5-star button and rate with Space
        star = browser.find_element(By.ID, f"ask-{ids[3]}-5")
        browser.execute_script("arguments[0].focus()", star)
        star.send_keys(Keys.SPACE)
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
        found.find_element(By.ID, f"found-{found_id}-5").click()
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


@pytest.fixture(scope="module")
def page_url(bundle_path: Path, recommender: Recommender) -> Iterator[str]:
    """The test bundle served on a local port for the browser tests below."""
    loaded = Loaded(recommender, model_version(recommender), "ml-100k")
    app = create_app(Settings(model=bundle_path, reload_interval=0, access_log=False), loaded)
    with serve_in_thread(app) as url:
        yield url + "/"


def open_page(driver: Any, url: str, width: int = PHONE, height: int = 844) -> list[int]:
    """Load the page on a ``width``×``height`` screen; wait for the first list; the ids of
    the movies it asks about."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.get(url)
    WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.ID, "recs").get_attribute("data-ratings") == "0"
    )
    asked = driver.find_elements(By.CSS_SELECTOR, "#onboarding li")
    return [int(li.get_attribute("data-item-id")) for li in asked]


def requests_made(driver: Any) -> int:
    """How many POST /v1/recommendations the page has sent (the browser's resource timing)."""
    return int(
        driver.execute_script(
            "return performance.getEntriesByType('resource')"
            ".filter(e => e.name.endsWith('/v1/recommendations')).length"
        )
    )


def wait_ratings(driver: Any, count: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.ID, "recs").get_attribute("data-ratings") == str(count)
    )


def checked(driver: Any, item_id: int) -> list[str]:
    from selenium.webdriver.common.by import By

    stars = driver.find_elements(By.CSS_SELECTOR, f"#onboarding [data-item-id='{item_id}'] button")
    return [s.get_attribute("aria-checked") for s in stars]


def test_stars_are_a_keyboard_radio_group(browser: Any, page_url: str) -> None:
    """Tab enters a movie's stars once; arrows move the focus and rate nothing (no request);
    Space or Enter rates the focused star; Tab then goes on to the next movie."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ids = open_page(browser, page_url, 1100, 900)
    active = lambda: browser.switch_to.active_element.get_attribute("id")  # noqa: E731
    keys = ActionChains(browser)
    group = browser.execute_script(
        "return document.querySelector('#onboarding .stars').getAttribute('role')"
    )
    assert group == "radiogroup"
    browser.execute_script("document.activeElement.blur()")
    before = requests_made(browser)
    keys.send_keys(Keys.TAB).perform()
    assert active() == f"ask-{ids[0]}-1"  # the group's one tab stop: 1★ while unrated
    keys.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT).perform()
    assert active() == f"ask-{ids[0]}-4"
    keys.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_LEFT).perform()
    assert active() == f"ask-{ids[0]}-4"  # stops at 5★, back to 4★
    assert requests_made(browser) == before and checked(browser, ids[0]) == ["false"] * 5
    keys.send_keys(Keys.SPACE).perform()
    wait_ratings(browser, 1)
    assert checked(browser, ids[0]) == ["false", "false", "false", "true", "false"]
    assert requests_made(browser) == before + 1
    keys.send_keys(Keys.TAB).perform()
    assert active() == f"ask-{ids[1]}-1"  # the next movie, not the next star
    keys.key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    assert active() == f"ask-{ids[0]}-4"  # back on the chosen star
    keys.send_keys(Keys.HOME).perform()
    assert active() == f"ask-{ids[0]}-1" and requests_made(browser) == before + 1
    keys.send_keys(Keys.ARROW_UP, Keys.ENTER).perform()
    browser.implicitly_wait(0)
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(lambda d: checked(d, ids[0])[1] == "true")
    assert requests_made(browser) == before + 2


def test_phone_shows_the_first_recommendation_after_the_first_rating(
    browser: Any, page_url: str
) -> None:
    """At 390×844, without scrolling: the first movie's stars and, after rating it, the first
    recommendation are on screen and not covered; every star is at least 44×44 px."""
    from selenium.webdriver.common.by import By

    ids = open_page(browser, page_url, PHONE, 844)
    star = browser.find_element(By.ID, f"ask-{ids[0]}-4")
    assert on_screen(browser, star)
    star.click()
    wait_ratings(browser, 1)
    assert browser.execute_script("return window.scrollY") == 0
    first = browser.find_element(By.CSS_SELECTOR, "#recs li")
    assert on_screen(browser, first), first.rect
    assert on_screen(browser, star)  # the panel does not cover what was just rated
    sizes = browser.execute_script(
        "return [...document.querySelectorAll('.stars button')]"
        ".map(b => { const r = b.getBoundingClientRect(); return [r.width, r.height]; })"
    )
    assert len(sizes) == 5 * len(ids) and min(min(s) for s in sizes) >= 44, min(sizes)


def on_screen(driver: Any, element: Any) -> bool:
    """``element`` lies inside the viewport and is what the browser hits at its centre."""
    return bool(
        driver.execute_script(
            "const e = arguments[0], r = e.getBoundingClientRect();"
            "const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);"
            "return r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight"
            " && r.right <= innerWidth && (hit === e || e.contains(hit));",
            element,
        )
    )


def test_recommendations_show_rank_genres_and_reason(
    browser: Any, page_url: str, recommender: Recommender
) -> None:
    """Each recommendation: its rank where the list's gutter was, its genres, and "Because
    you rated …" when the API gives the support items behind it (nothing when it does not)."""
    from selenium.webdriver.common.by import By

    ids = open_page(browser, page_url, 1100, 900)
    browser.find_element(By.ID, f"ask-{ids[0]}-5").click()
    wait_ratings(browser, 1)
    rows = browser.find_elements(By.CSS_SELECTOR, "#recs li")
    ranks = [r.find_element(By.CLASS_NAME, "rank").text for r in rows]
    assert ranks == [str(i) for i in range(1, 11)]
    gutter = browser.execute_script(
        "const ol = document.getElementById('recs').getBoundingClientRect();"
        "const rank = document.querySelector('#recs .rank').getBoundingClientRect();"
        "const h2 = document.getElementById('recs-h').getBoundingClientRect();"
        "return [rank.left - ol.left, ol.left - h2.left];"
    )
    assert gutter == [0, 0]  # no empty indent: the rank sits flush with the heading
    answer = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const body = {user: {}, ratings: [{item_id: arguments[0], rating: 5}], k: 10,"
        " exclude_rated: true};"
        "fetch('/v1/recommendations', {method: 'POST', headers: {'content-type':"
        " 'application/json'}, body: JSON.stringify(body)}).then(r => r.json()).then(done);",
        ids[0],
    )
    for row, item in zip(rows, answer["items"], strict=True):  # "because" once the API has it
        why = row.find_elements(By.CLASS_NAME, "why")
        if item.get("because"):
            top = item["because"][0]
            assert why and why[0].text.startswith(f"Because you rated {top['title']}")
        else:
            assert not why
    for row in rows:
        item = recommender.catalog.item(
            int(recommender.catalog.rows([int(row.get_attribute("data-item-id"))], ("id",))[0])
        )
        meta = row.find_element(By.CLASS_NAME, "meta").text
        assert meta == ", ".join(item.genres)
    reasons = browser.execute_script(
        "return [reasonText([{item_id: 50, title: 'Star Wars (1977)', year: 1977, rating: 5}]),"
        " reasonText([{item_id: 1, title: 'Toy Story (1995)', rating: 4.5},"
        "  {item_id: 2, title: 'Heat', year: 1995, rating: 3}]), reasonText([]),"
        " reasonText(undefined)]"
    )
    assert reasons == [
        "Because you rated Star Wars (1977) 5★",
        "Because you rated Toy Story (1995) 4.5★ and Heat (1995) 3★",
        "",
        "",
    ]


def test_clear_all_and_profile_errors(browser: Any, page_url: str) -> None:
    """ "Clear all" forgets every rating; an age of 200 or an occupation the model does not
    know is shown as an error beside the field (and sent nowhere) until it is corrected."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    ids = open_page(browser, page_url, 1100, 900)
    clear = browser.find_element(By.ID, "clear-all")
    assert not clear.is_enabled()
    browser.find_element(By.ID, f"ask-{ids[0]}-5").click()
    wait_ratings(browser, 1)
    browser.find_element(By.ID, f"ask-{ids[1]}-2").click()
    wait_ratings(browser, 2)
    clear.click()
    wait_ratings(browser, 0)
    assert checked(browser, ids[0]) == ["false"] * 5 == checked(browser, ids[1])
    assert browser.find_element(By.ID, "rated").text == "Nothing rated yet."
    assert not clear.is_enabled()

    age = browser.find_element(By.ID, "age")
    age.send_keys("200", Keys.TAB)
    error = browser.find_element(By.ID, "age-error")
    assert error.is_displayed() and "1 to 120" in error.text
    assert age.get_attribute("aria-invalid") == "true"
    status = browser.find_element(By.ID, "status").text
    assert "About you" in status
    sent = requests_made(browser)
    browser.find_element(By.ID, f"ask-{ids[2]}-4").click()
    assert requests_made(browser) == sent  # nothing sent with the bad age
    age.clear()
    age.send_keys("30", Keys.TAB)
    wait_ratings(browser, 1)
    assert not error.is_displayed() and age.get_attribute("aria-invalid") is None

    job = browser.find_element(By.ID, "occupation")
    job.send_keys("astronaut", Keys.TAB)
    wrong = browser.find_element(By.ID, "occupation-error")
    assert wrong.is_displayed() and "astronaut" in wrong.text
    job.clear()
    job.send_keys("Student", Keys.TAB)  # a value the model knows, any case
    assert browser.find_element(By.ID, "occupation-error").text == ""
    known = browser.execute_script(
        "return [...document.querySelectorAll('#occupations option')].map(o => o.value)"
    )
    assert "student" in known and "astronaut" not in known


def test_offline_says_so_marks_the_list_stale_and_retries(browser: Any, page_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ids = open_page(browser, page_url, 1100, 900)
    before = recommended(browser)
    offline = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", offline)
    try:
        browser.find_element(By.ID, f"ask-{ids[0]}-5").click()
        status = browser.find_element(By.ID, "status")
        WebDriverWait(browser, 30).until(lambda d: "offline" in status.text)
        assert "from before your last change" in status.text
        recs = browser.find_element(By.ID, "recs")
        assert recs.get_attribute("data-stale") == "true" and recommended(browser) == before
        retry = browser.find_element(By.ID, "retry")
        assert retry.is_displayed()
    finally:
        online = {**offline, "offline": False}
        browser.execute_cdp_cmd("Network.emulateNetworkConditions", online)
    retry.click()
    wait_ratings(browser, 1)
    assert recs.get_attribute("data-stale") is None and not retry.is_displayed()
    assert recommended(browser) != before and "Based on your 1 rating" in status.text
