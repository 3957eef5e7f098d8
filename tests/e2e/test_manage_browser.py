"""The manage page in a real browser: headless Chromium against gunicorn and the stand-in, on loopback.

Debian's `chromium` and `chromium-driver` (`make test` installs them when missing), driven through
Selenium with the system chromedriver named explicitly: Selenium Manager never runs, nothing is
downloaded. Each test waits on what the page shows, never on a fixed sleep; screenshots go to
tests/e2e/out/ (see docs/manage.png for one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common import selenium_manager
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from devtools.processes import ROOT, wait_for
from webhooks.inbox import Inbox

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOTS = ROOT / "tests" / "e2e" / "out"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1100",
)
XSS = "<img src=x onerror=alert(1)>"
WAIT = 30  # seconds; a bound, never a pause


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """A fresh headless Chromium with its own profile; JS errors and CSP violations fail the test."""
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing: `make test` installs them")
        pytest.skip("needs Debian's chromium and chromium-driver (`make test` installs them)")

    def no_manager(*args, **kwargs):
        raise AssertionError("Selenium Manager must not run: the driver is named explicitly")

    monkeypatch.setattr(selenium_manager.SeleniumManager, "binary_paths", no_manager)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
        problems = [
            entry["message"]
            for entry in driver.get_log("browser")
            if "Content Security Policy" in entry["message"] or "Uncaught" in entry["message"]
        ]
        assert not problems, problems
    finally:
        driver.quit()


def shot(driver, name: str) -> Path:
    """Save a screenshot under tests/e2e/out/ and return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"manage-{name}.png"
    driver.save_screenshot(str(path))
    return path


def until(driver, condition, what: str):
    """Wait for `condition(driver)` to be truthy (at most WAIT seconds) and return its value."""
    return WebDriverWait(driver, WAIT).until(condition, message=f"waiting for {what}")


def text_of(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def sign_in(driver, service, email: str, password: str) -> None:
    """Open the page and sign in through the form (the browser posts to the stand-in's login)."""
    driver.get(service.url + "/manage/")
    until(driver, EC.visibility_of_element_located((By.ID, "login-form")), "the sign-in form")
    driver.find_element(By.ID, "login-user").send_keys(email)
    company = driver.find_element(By.ID, "login-company")
    company.clear()
    company.send_keys("demo")
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()


def signed_in(driver, service) -> None:
    sign_in(driver, service, "admin@demo.test", "admin-pass-123")
    until(driver, EC.visibility_of_element_located((By.ID, "inbox")), "the inbox")


def row_state(driver, event_id: str) -> str | None:
    """Return the state shown for an event in the list, or None while it is not listed."""
    for row in driver.find_elements(By.CSS_SELECTOR, "#events tr"):
        if row.get_attribute("data-id") == event_id:
            return row.find_element(By.CSS_SELECTOR, ".badge").text
    return None


def deliver(service, secret: str, event_id: str, event: str, data: dict) -> None:
    """POST a delivery to the service as Rehive would."""
    body = {"id": event_id, "event": event, "company": "demo", "data": data}
    response = requests.post(
        service.url + "/webhooks/", json=body, headers={"Authorization": f"Secret {secret}"}, timeout=10
    )
    assert response.status_code == 202, response.text


def inbox_status(path: Path, event_id: str) -> str | None:
    store = Inbox(str(path))
    try:
        rows = store.get(event_id, "demo")
        return rows[0]["status"] if rows else None
    finally:
        store.close()


def test_the_admin_signs_in_and_sees_the_events_arrive_without_a_reload(
    browser, start, stand_in, webhook_secret
):
    service = start()
    deliver(service, webhook_secret, "evt-before", "user.create", {"id": "u-1"})
    signed_in(browser, service)
    until(browser, lambda d: row_state(d, "evt-before") == "done", "the first event, done")
    assert text_of(browser, "#company-name") == "demo"
    assert "transaction.execute" in text_of(browser, "#webhooks")  # the stand-in's webhooks that point here
    assert "enabled" in text_of(browser, "#webhooks")
    token = browser.execute_script("return sessionStorage.getItem('manage.token')")
    assert token and token not in browser.current_url
    assert browser.get_cookies() == []  # the token is in sessionStorage only

    # A credit at the stand-in fires transaction.execute; it appears with no reload.
    stand_in.admin(
        "POST",
        "admin/transactions/credit/",
        json={"user": "alice@demo.test", "amount": 500, "currency": "USD", "status": "Complete"},
    )
    until(
        browser,
        lambda d: any(
            "transaction.execute" in row.text for row in d.find_elements(By.CSS_SELECTOR, "#events tr")
        ),
        "the credit's webhook to appear",
    )
    shot(browser, "signed-in")


def test_a_dead_event_is_replayed_and_becomes_done_on_screen(
    browser, start, stand_in, webhook_secret, tmp_path
):
    service = start(WEBHOOK_MAX_ATTEMPTS="1", SAVINGS_PERCENT="10", REHIVE_COMPANY="demo")
    alice = next(
        user for user in stand_in.control("users?company=demo") if user["email"] == "alice@demo.test"
    )
    credit = {
        "id": "tx-replayed",
        "tx_type": "credit",
        "status": "Complete",
        "partner": None,
        "amount": 1000,
        "currency": "USD",
        "account": alice["account"],
        "user": {"id": alice["id"]},
    }
    # A custom call answers only once the service has confirmed its admin token's company, so no
    # start-up call of the service's races the fault below.
    token = stand_in.login("alice@demo.test", "alice-pass-123")
    custom = requests.get(
        f"{service.url}/custom/transactions/", headers={"Authorization": f"Token {token}"}, timeout=10
    )
    assert custom.status_code == 200
    # Rehive refuses (400): a failure of the event's own making, so with one attempt allowed it dies.
    # (A 5xx would not do: an outage never uses up an attempt.)
    stand_in.control(error_rate=1.0, error_status=400)
    deliver(service, webhook_secret, "evt-dead", "transaction.execute", credit)
    wait_for(lambda: inbox_status(tmp_path / "inbox.sqlite3", "evt-dead") == "dead", timeout=WAIT)
    stand_in.control(error_rate=0.0)

    signed_in(browser, service)
    until(browser, lambda d: row_state(d, "evt-dead") == "dead", "the dead event")
    until(browser, lambda d: "Replay all dead (1)" in d.find_element(By.ID, "replay-dead").text, "the count")
    browser.find_element(By.CSS_SELECTOR, '#events tr[data-id="evt-dead"]').click()
    until(browser, lambda d: text_of(d, "#d-id") == "evt-dead", "the event's detail")
    assert "RehiveRequestError" in text_of(browser, "#d-error")
    shot(browser, "dead")
    browser.find_element(By.ID, "replay").click()
    until(browser, lambda d: text_of(d, "#d-status") == "done", "the replayed event, done in its detail")
    until(browser, lambda d: row_state(d, "evt-dead") == "done", "the replayed event, done in the list")
    assert text_of(browser, "#d-attempts") == "1"
    shot(browser, "replayed")


def test_a_user_who_is_not_an_admin_is_refused(browser, start):
    service = start()
    sign_in(browser, service, "alice@demo.test", "alice-pass-123")
    until(browser, EC.text_to_be_present_in_element((By.ID, "login-error"), "may not manage"), "the refusal")
    assert not browser.find_element(By.ID, "app").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('manage.token')") is None
    shot(browser, "refused")


def test_a_pasted_token_signs_in_where_the_login_form_is_not_used(browser, start, stand_in):
    service = start()
    token = stand_in.login("admin@demo.test", "admin-pass-123")
    browser.get(service.url + "/manage/")
    until(browser, EC.visibility_of_element_located((By.ID, "paste")), "the sign-in form")
    browser.find_element(By.CSS_SELECTOR, "#paste summary").click()
    browser.find_element(By.ID, "token-input").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    until(browser, EC.visibility_of_element_located((By.ID, "inbox")), "the inbox")
    assert browser.find_element(By.ID, "token-input").get_attribute("value") == ""  # not left on screen
    browser.find_element(By.ID, "sign-out").click()
    until(browser, EC.visibility_of_element_located((By.ID, "login-form")), "the sign-in form again")
    assert browser.execute_script("return sessionStorage.length") == 0
    # A pasted token is only forgotten, never logged out at Rehive: Rehive still accepts it.
    response = requests.get(
        f"{stand_in.url}/3/auth/", headers={"Authorization": f"Token {token}"}, timeout=10
    )
    assert response.status_code == 200


def test_html_in_an_event_is_shown_as_text_and_runs_nothing(browser, start, webhook_secret):
    service = start()
    deliver(service, webhook_secret, "evt-xss", "user.update", {"id": "u-1", "note": XSS})
    deliver(service, webhook_secret, XSS, XSS, {"note": XSS})
    signed_in(browser, service)
    until(browser, lambda d: row_state(d, "evt-xss") is not None, "the event")
    browser.find_element(By.CSS_SELECTOR, '#events tr[data-id="evt-xss"]').click()
    until(browser, lambda d: XSS in text_of(d, "#d-data"), "the payload")
    assert json.loads(text_of(browser, "#d-data"))["note"] == XSS  # visible, as text
    assert any(XSS in row.text for row in browser.find_elements(By.CSS_SELECTOR, "#events tr"))
    assert browser.find_elements(By.TAG_NAME, "img") == []  # no element was made from it
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert  # noqa: B018 - reading it is the check
    shot(browser, "html-as-text")


def test_a_settings_change_sticks_across_a_reload(browser, start):
    service = start(SAVINGS_PERCENT="10")
    signed_in(browser, service)
    field = until(browser, lambda d: d.find_element(By.ID, "savings-percent"), "the settings")
    until(browser, lambda d: field.get_attribute("value") == "10", "SAVINGS_PERCENT as the default")
    field.clear()
    field.send_keys("35")
    browser.find_element(By.CSS_SELECTOR, "#settings-form button").click()
    until(browser, EC.text_to_be_present_in_element((By.ID, "settings-message"), "Saved: 35"), "saved")
    browser.refresh()  # still signed in (sessionStorage survives a reload), and the value stuck
    field = until(browser, EC.visibility_of_element_located((By.ID, "savings-percent")), "the settings again")
    until(browser, lambda d: field.get_attribute("value") == "35", "the saved value after a reload")


def test_try_the_flow_in_local_mode(browser, start):
    service = start(LOCAL_MODE="1", SAVINGS_PERCENT="10", REHIVE_COMPANY="demo")
    signed_in(browser, service)
    browser.find_element(By.ID, "try-login").click()
    until(browser, EC.element_to_be_clickable((By.ID, "try-custom")), "alice's token")
    browser.find_element(By.ID, "try-custom").click()
    until(browser, EC.text_to_be_present_in_element((By.ID, "try-custom-out"), "200"), "her transactions")
    assert "only her own" in text_of(browser, "#try-custom-out")
    browser.find_element(By.ID, "try-credit").click()
    until(browser, EC.text_to_be_present_in_element((By.ID, "try-event-out"), "done"), "the event, done")
    until(browser, EC.text_to_be_present_in_element((By.ID, "try-savings-out"), "moved 1.00 USD"), "savings")
    event_id = text_of(browser, "#d-id")  # the page opened the credit's event
    until(browser, lambda d: row_state(d, event_id) == "done", "the event in the list too")
    browser.set_window_size(1440, 1500)  # the whole page, for docs/manage.png
    shot(browser, "try-the-flow")
