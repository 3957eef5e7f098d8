"""The local Rehive stand-in, tested over real HTTP on free loopback ports."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from flask import Response
from werkzeug.datastructures import MultiDict
from werkzeug.serving import make_server
from werkzeug.wrappers import Request

from devtools.processes import start_local_rehive
from local_rehive import DEMO_SERVICE_TOKEN, OTHER_SERVICE_TOKEN, RunningServer, create_app, serve
from local_rehive.idempotency import IdempotencyCache
from local_rehive.listing import MAX_PAGE_SIZE, paginate
from local_rehive.state import platform_of

ROOT = Path(__file__).resolve().parent.parent
ADMIN = DEMO_SERVICE_TOKEN
SECRET = "s3cret-for-tests"
FAST_RETRIES = [0.05, 0.05, 0.05]
SEEDED_DEMO_TRANSACTIONS = 38  # 12 for each of admin, alice and bob, plus alice's transfer to bob
T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 5.0) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


class Rehive:
    """A stand-in served on a free port, and the calls the tests make to it."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.url = server.url

    def call(self, method: str, path: str, token: str | None = ADMIN, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers.setdefault("Authorization", f"Token {token}")
        return requests.request(method, f"{self.url}/3/{path}", headers=headers, timeout=10, **kwargs)

    def login(self, user: str, password: str, company: str = "demo") -> str:
        body = {"user": user, "company": company, "password": password}
        response = self.call("POST", "auth/login/", token=None, json=body)
        assert response.status_code == 200, response.text
        return response.json()["data"]["token"]

    def control(self, path: str = "", body: dict | None = None) -> Any:
        if body is None:
            response = requests.get(f"{self.url}/_control/{path}", timeout=10)
        else:
            response = requests.post(f"{self.url}/_control/{path}", json=body, timeout=10)
        assert response.ok, response.text
        return response.json()

    def all_transactions(self, token: str = ADMIN, **params: str) -> list[dict]:
        response = self.call("GET", "admin/transactions/", token=token, params={"page_size": "250", **params})
        assert response.status_code == 200, response.text
        return response.json()["data"]["results"]

    def user(self, email: str) -> dict:
        return next(user for user in self.control("users") if user["email"] == email)

    def subscribe(self, url: str, *events: str, secret: str = SECRET) -> None:
        for event in events:
            response = self.call(
                "POST", "admin/webhooks/", json={"url": url, "event": event, "secret": secret}
            )
            assert response.status_code == 201, response.text

    def credit(self, headers: dict | None = None, **body: Any) -> requests.Response:
        body = {"currency": "USD", **body}
        return self.call("POST", "admin/transactions/credit/", json=body, headers=headers or {})


@pytest.fixture
def rehive() -> Iterator[Rehive]:
    server = serve("127.0.0.1", 0, webhook_retry_delays=FAST_RETRIES)
    yield Rehive(server)
    server.shutdown()


class Receiver:
    """A tiny webhook receiver: records each POST and answers the next queued status (then 202)."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self.received: list[dict] = []
        self._statuses = list(statuses)
        self._lock = threading.Lock()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.port}/webhooks/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def _app(self, environ: dict, start_response: Callable) -> list[bytes]:
        request = Request(environ)
        with self._lock:
            self.received.append({"headers": dict(request.headers), "body": json.loads(request.get_data())})
            status = self._statuses.pop(0) if self._statuses else 202
        start_response(f"{status} Answer", [("Content-Type", "text/plain")])
        return [b"ok"]

    def bodies(self) -> list[dict]:
        with self._lock:
            return [request["body"] for request in self.received]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(*statuses: int) -> Receiver:
        started.append(Receiver(statuses))
        return started[-1]

    yield start
    for one in started:
        one.close()


# -- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_its_url_applies_options_and_stops_cleanly(stop_signal):
    command = [sys.executable, "-m", "local_rehive", "--port", "0", "--latency-ms", "5"]
    command += ["--throttle-retry-after", "9", "--webhook-retry-delays", "0.1,0.3"]
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"local_rehive listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match and int(match.group(2)) > 0, line
        url = match.group(1)
        knobs = requests.get(f"{url}/_control/", timeout=10).json()
        assert knobs["latency_ms"] == 5
        assert knobs["throttle_retry_after"] == 9
        assert knobs["webhook_retry_delays"] == [0.1, 0.3]
        auth = requests.get(f"{url}/3/auth/", headers={"Authorization": f"Token {ADMIN}"}, timeout=10)
        assert auth.status_code == 200
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""  # exactly one line on stdout


# -- auth -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slash", ["/", ""])
def test_login_auth_logout_cycle(rehive, slash):
    body = {"user": "alice@demo.test", "company": "demo", "password": "alice-pass-123"}
    login = rehive.call("POST", f"auth/login{slash}", token=None, json=body)
    assert login.status_code == 200
    data = login.json()["data"]
    assert login.json()["status"] == "success"
    assert len(data["token"]) == 64
    assert data["refresh_token"] is None and data["challenges"] == []
    assert list(data["user"]) == ["id"]
    assert data["expires"] > data["created"] > 1_600_000_000_000

    me = rehive.call("GET", f"auth{slash}", token=data["token"])
    assert me.status_code == 200
    user = me.json()["data"]
    assert user["id"] == data["user"]["id"]
    assert user["email"] == "alice@demo.test"
    assert user["company"] == "demo"
    assert user["groups"] == [{"name": "user", "label": "User", "section": "user"}]
    for field in ("username", "mobile", "first_name", "last_name", "owner", "temporary", "status"):
        assert field in user
    for field in ("verification", "metadata", "settings", "currency", "account", "created", "updated"):
        assert field in user

    logout = rehive.call("POST", f"auth/logout{slash}", token=data["token"])
    assert (logout.status_code, logout.json()) == (200, {"status": "success"})
    again = rehive.call("GET", "auth/", token=data["token"])
    assert (again.status_code, again.json()) == (401, {"status": "error", "message": "Invalid token."})


def test_login_accepts_the_user_id(rehive):
    alice = rehive.user("alice@demo.test")
    token = rehive.login(alice["id"], "alice-pass-123")
    assert rehive.call("GET", "auth/", token=token).json()["data"]["email"] == "alice@demo.test"


@pytest.mark.parametrize(
    ("user", "company", "password"),
    [
        ("alice@demo.test", "demo", "wrong-pass"),
        ("nobody@demo.test", "demo", "alice-pass-123"),
        ("mallory@other.test", "demo", "mallory-pass-123"),
        ("alice@demo.test", "nowhere", "alice-pass-123"),
    ],
)
def test_wrong_credentials_are_a_400(rehive, user, company, password):
    body = {"user": user, "company": company, "password": password}
    response = rehive.call("POST", "auth/login/", token=None, json=body)
    assert response.status_code == 400
    assert response.json() == {"status": "error", "message": "Unable to log in with provided credentials."}


def test_login_names_missing_fields(rehive):
    response = rehive.call("POST", "auth/login/", token=None, json={"user": "alice@demo.test"})
    assert response.status_code == 400
    assert set(response.json()["data"]) == {"company", "password"}


def _expired_token(rehive: Rehive) -> str:
    return rehive.control("tokens", {"company": "demo", "user": "alice@demo.test", "expires_in": 0})["token"]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Token",
        "Token made-up",
        f"Bearer {ADMIN}",
        f"Token {ADMIN} extra",
        "expired",
    ],
)
def test_bad_tokens_are_a_401(rehive, header):
    if header == "expired":
        header = f"Token {_expired_token(rehive)}"
    headers = {} if header is None else {"Authorization": header}
    response = rehive.call("GET", "auth/", token=None, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"status": "error", "message": "Invalid token."}
    assert response.headers["WWW-Authenticate"] == "Token"


def test_auth_calls_are_recorded_with_x_forwarded_for(rehive):
    token = rehive.login("bob@demo.test", "bob-pass-123")
    rehive.call("GET", "auth/", token=token, headers={"X-Forwarded-For": "203.0.113.7"})
    calls = [call for call in rehive.control("auth-calls") if call["path"] == "/3/auth/"]
    assert [(c["user"], c["status"], c["forwarded_for"]) for c in calls] == [
        ("bob@demo.test", 200, "203.0.113.7")
    ]
    assert calls[0]["user_id"] == rehive.user("bob@demo.test")["id"]


# -- who may see what -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["admin/transactions/", "admin/webhooks/", "admin/accounts/"])
def test_admin_paths_refuse_user_tokens_and_allow_admins(rehive, path):
    alice = rehive.login("alice@demo.test", "alice-pass-123")
    refused = rehive.call("GET", path, token=alice)
    assert refused.status_code == 403
    assert refused.json() == {
        "status": "error",
        "message": "You do not have permission to perform this action.",
    }
    admin = rehive.login("admin@demo.test", "admin-pass-123")
    assert rehive.call("GET", path, token=admin).status_code == 200
    assert rehive.call("GET", path, token=ADMIN).status_code == 200


def test_companies_see_only_their_own_data(rehive):
    other = rehive.all_transactions(token=OTHER_SERVICE_TOKEN)
    assert len(other) == 12
    assert {tx["user"]["email"] for tx in other} == {"mallory@other.test"}
    demo = rehive.all_transactions()
    assert len(demo) == SEEDED_DEMO_TRANSACTIONS
    assert "mallory@other.test" not in {tx["user"]["email"] for tx in demo}

    assert rehive.call("GET", f"admin/transactions/{other[0]['id']}/").status_code == 404
    assert rehive.call("GET", f"admin/transactions/{demo[0]['id']}/").status_code == 200
    assert rehive.credit(user="mallory@other.test", amount=100).status_code == 400
    mallory = rehive.user("mallory@other.test")["id"]
    assert rehive.all_transactions(user=mallory) == []


def test_users_see_their_own_transactions_in_the_user_shape(rehive):
    token = rehive.login("alice@demo.test", "alice-pass-123")
    response = rehive.call("GET", "transactions/", token=token, params={"page_size": "50"})
    results = response.json()["data"]["results"]
    assert len(results) == 13
    alice_ids = {tx["id"] for tx in rehive.all_transactions(user="alice@demo.test")}
    assert {tx["id"] for tx in results} == alice_ids
    for tx in results:
        assert not {"user", "creator", "index", "archived"} & set(tx)
    partner = next(tx["partner"] for tx in results if tx["partner"])
    assert partner["user"]["identifier"] == "bob@demo.test"
    assert "email" not in partner["user"]


# -- admin transactions: filters, pagination, detail, status ------------------------------------------


def _filter_cases(rehive: Rehive, everything: list[dict]) -> dict[str, tuple[dict, Callable[[dict], bool]]]:
    alice = rehive.user("alice@demo.test")
    times = sorted(tx["created"] for tx in everything)
    low, high = times[5], times[20]
    two = [everything[3]["id"], everything[9]["id"]]
    return {
        "status, any case": ({"status": "complete"}, lambda tx: tx["status"] == "Complete"),
        "status__in": ({"status__in": "pending,FAILED"}, lambda tx: tx["status"] in ("Pending", "Failed")),
        "tx_type": ({"tx_type": "debit"}, lambda tx: tx["tx_type"] == "debit"),
        "subtype": ({"subtype": "deposit"}, lambda tx: tx["subtype"] == "deposit"),
        "currency": ({"currency": "EUR"}, lambda tx: tx["currency"]["code"] == "EUR"),
        "user id": ({"user": alice["id"]}, lambda tx: tx["user"]["id"] == alice["id"]),
        "user email": ({"user": "alice@demo.test"}, lambda tx: tx["user"]["id"] == alice["id"]),
        "account": ({"account": alice["account"]}, lambda tx: tx["account"] == alice["account"]),
        "id": ({"id": two[0]}, lambda tx: tx["id"] == two[0]),
        "id__in": ({"id__in": ",".join(two)}, lambda tx: tx["id"] in two),
        "created range": (
            {"created__gte": str(low), "created__lt": str(high)},
            lambda tx: low <= tx["created"] < high,
        ),
        "updated__gt": ({"updated__gt": str(low)}, lambda tx: tx["updated"] > low),
        "amount__lt": ({"amount__lt": "0"}, lambda tx: tx["amount"] < 0),
        "amount__gte": ({"amount__gte": "20000"}, lambda tx: tx["amount"] >= 20_000),
        "partner__isnull": ({"partner__isnull": "false"}, lambda tx: tx["partner"] is not None),
        "unknown params ignored": (
            {"status": "Pending", "colour": "blue"},
            lambda tx: tx["status"] == "Pending",
        ),
    }


def test_filters_select_exactly_the_matching_transactions(rehive):
    everything = rehive.all_transactions()
    for name, (params, matches) in _filter_cases(rehive, everything).items():
        expected = {tx["id"] for tx in everything if matches(tx)}
        assert 0 < len(expected) < len(everything), name  # each case must be able to fail
        assert {tx["id"] for tx in rehive.all_transactions(**params)} == expected, name


@pytest.mark.parametrize(
    ("orderby", "key", "reverse"), [("created", "created", False), ("-amount", "amount", True)]
)
def test_orderby(rehive, orderby, key, reverse):
    listed = [tx[key] for tx in rehive.all_transactions(orderby=orderby)]
    assert listed == sorted(listed, reverse=reverse)
    default = [tx["created"] for tx in rehive.all_transactions()]
    assert default == sorted(default, reverse=True)


def test_bad_filter_values_are_a_400(rehive):
    response = rehive.call("GET", "admin/transactions/", params={"created__gt": "yesterday"})
    assert response.status_code == 400
    assert response.json()["data"] == {"created__gt": ["Enter a number."]}


def test_pagination_links_walk_every_page_and_keep_the_query(rehive):
    expected = {tx["id"] for tx in rehive.all_transactions(status="Complete")}
    url: str | None = f"{rehive.url}/3/admin/transactions/?status=Complete&page_size=5"
    seen: list[str] = []
    pages = []
    while url:
        data = requests.get(url, headers={"Authorization": f"Token {ADMIN}"}, timeout=10).json()["data"]
        assert data["count"] == len(expected)
        seen += [tx["id"] for tx in data["results"]]
        pages.append(data)
        url = data["next"]
    assert len(seen) == len(set(seen)) and set(seen) == expected
    assert len(pages) == -(-len(expected) // 5)
    assert pages[0]["previous"] is None
    assert pages[1]["next"] == f"{rehive.url}/3/admin/transactions/?page=3&page_size=5&status=Complete"
    assert pages[1]["previous"] == f"{rehive.url}/3/admin/transactions/?page_size=5&status=Complete"


@pytest.mark.parametrize("page", ["0", "-1", "x", "99"])
def test_pages_out_of_range_are_a_404(rehive, page):
    response = rehive.call("GET", "admin/transactions/", params={"page": page})
    assert (response.status_code, response.json()) == (404, {"status": "error", "message": "Invalid page."})


@pytest.mark.parametrize(("asked", "size"), [(None, 15), ("7", 7), ("1000", MAX_PAGE_SIZE), ("junk", 15)])
def test_page_size_defaults_and_is_clamped(asked, size):
    args = MultiDict({} if asked is None else {"page_size": asked})
    page = paginate(list(range(300)), args, "http://h/3/x/", lambda item: {"n": item})
    assert len(page["results"]) == size


def test_detail_is_extended_and_status_moves_once(rehive):
    tx = rehive.credit(user="bob@demo.test", amount=700, status="pending").json()["data"]
    assert tx["status"] == "Pending" and tx["executed"] is None
    detail = rehive.call("GET", f"admin/transactions/{tx['id']}/").json()["data"]
    assert detail["creator"]["groups"][0]["name"] == "service"
    assert detail["user"]["email"] == "bob@demo.test"

    done = rehive.call("PATCH", f"admin/transactions/{tx['id']}/", json={"status": "Complete"})
    assert done.status_code == 200
    assert done.json()["data"]["status"] == "Complete" and done.json()["data"]["executed"]
    refused = rehive.call("PATCH", f"admin/transactions/{tx['id']}/", json={"status": "Failed"})
    assert refused.status_code == 400
    assert rehive.call("GET", f"admin/transactions/{tx['id']}/").json()["data"]["status"] == "Complete"


# -- transfers and accounts -------------------------------------------------------------------------


def _available_usd(rehive: Rehive, email: str) -> int:
    token = rehive.control("tokens", {"company": "demo", "user": email})["token"]
    return rehive.call("GET", "auth/", token=token).json()["data"]["available_balance"]


def test_transfer_makes_two_partnered_legs(rehive):
    body = {"user": "alice@demo.test", "recipient": "bob@demo.test", "amount": 1_000, "currency": "USD"}
    response = rehive.call("POST", "admin/transactions/transfer/", json=body)
    assert response.status_code == 201
    debit = response.json()["data"]
    legs = {tx["tx_type"]: tx for tx in rehive.all_transactions(collection=debit["collection"])}
    assert set(legs) == {"debit", "credit"}
    assert (legs["debit"]["amount"], legs["credit"]["amount"]) == (-1_000, 1_000)
    assert legs["debit"]["user"]["email"] == "alice@demo.test"
    assert legs["credit"]["user"]["email"] == "bob@demo.test"
    assert legs["debit"]["partner"]["id"] == legs["credit"]["id"]
    assert legs["credit"]["partner"]["id"] == legs["debit"]["id"]
    assert legs["credit"]["partner"]["user"]["email"] == "alice@demo.test"
    assert legs["debit"]["partner"]["account"] == legs["credit"]["account"]


def test_transfer_refuses_more_than_the_available_balance(rehive):
    available = _available_usd(rehive, "alice@demo.test")  # balance minus her pending debit
    before = len(rehive.all_transactions())
    body = {"user": "alice@demo.test", "recipient": "bob@demo.test", "currency": "USD"}
    refused = rehive.call("POST", "admin/transactions/transfer/", json={**body, "amount": available + 1})
    assert refused.status_code == 400
    assert refused.json() == {"status": "error", "message": "Insufficient balance."}
    assert len(rehive.all_transactions()) == before
    allowed = rehive.call("POST", "admin/transactions/transfer/", json={**body, "amount": available})
    assert allowed.status_code == 201
    assert _available_usd(rehive, "alice@demo.test") == 0


def test_accounts_can_be_created_listed_and_used(rehive):
    created = rehive.call("POST", "admin/accounts/", json={"user": "alice@demo.test", "name": "savings"})
    assert created.status_code == 201
    account = created.json()["data"]
    assert account["primary"] is False and account["user"]["email"] == "alice@demo.test"
    assert {c["currency"]["code"] for c in account["currencies"]} == {"USD", "EUR"}
    alice = rehive.user("alice@demo.test")["id"]
    listed = rehive.call("GET", "admin/accounts/", params={"user": alice, "name": "savings"}).json()["data"]
    assert [a["reference"] for a in listed["results"]] == [account["reference"]]
    body = {
        "user": "alice@demo.test",
        "recipient": "alice@demo.test",
        "credit_account": account["reference"],
        "amount": 123,
        "currency": "USD",
    }
    assert rehive.call("POST", "admin/transactions/transfer/", json=body).status_code == 201
    legs = rehive.all_transactions(account=account["reference"])
    assert [(tx["tx_type"], tx["amount"]) for tx in legs] == [("credit", 123)]


# -- webhooks -------------------------------------------------------------------------------------


def test_webhooks_are_created_and_duplicates_refused(rehive):
    body = {"url": "https://example.test/hook", "event": "transaction.execute", "secret": SECRET}
    created = rehive.call("POST", "admin/webhooks/", json=body)
    assert created.status_code == 201
    webhook = created.json()["data"]
    assert isinstance(webhook["id"], int)
    assert {k: webhook[k] for k in ("url", "event", "secret", "enabled", "service", "archived")} == {
        **body,
        "enabled": True,
        "service": None,
        "archived": False,
    }
    duplicate = rehive.call("POST", "admin/webhooks/", json=body)
    assert duplicate.status_code == 400
    assert duplicate.json() == {
        "status": "error",
        "message": "A webhook with the url and event already exists",
    }
    assert rehive.call("GET", "admin/webhooks/").json()["data"]["count"] == 1
    bad = rehive.call("POST", "admin/webhooks/", json={**body, "event": "transaction.explode"})
    assert bad.status_code == 400 and "event" in bad.json()["data"]


def test_a_complete_credit_fires_create_then_execute(rehive, receiver):
    hook = receiver()
    rehive.subscribe(hook.url, "transaction.create", "transaction.initiate", "transaction.execute")
    tx = rehive.credit(user="alice@demo.test", amount=12_345).json()["data"]
    bodies = wait_for(lambda: len(hook.bodies()) >= 2 and hook.bodies())
    assert [body["event"] for body in bodies] == ["transaction.create", "transaction.execute"]
    assert bodies[0]["id"] != bodies[1]["id"]
    for body in bodies:
        assert set(body) == {"id", "event", "company", "data"}
        assert body["company"] == "demo"
        assert body["data"]["id"] == tx["id"]
        assert body["data"]["amount"] == 12_345
        assert body["data"]["creator"]["groups"][0]["name"] == "service"
    for request in hook.received:
        assert request["headers"]["Authorization"] == f"Secret {SECRET}"
        assert request["headers"]["User-Agent"].startswith("rehive-platform/")
        assert request["headers"]["Content-Type"] == "application/json"


def test_a_pending_credit_fires_initiate_and_its_completion_fires_execute(rehive, receiver):
    hook = receiver()
    rehive.subscribe(hook.url, "transaction.initiate", "transaction.execute")
    tx = rehive.credit(user="bob@demo.test", amount=500, status="Pending").json()["data"]
    wait_for(lambda: hook.bodies())
    rehive.call("PATCH", f"admin/transactions/{tx['id']}/", json={"status": "Failed"})
    bodies = wait_for(lambda: len(hook.bodies()) >= 2 and hook.bodies())
    assert [(b["event"], b["data"]["status"]) for b in bodies] == [
        ("transaction.initiate", "Pending"),
        ("transaction.execute", "Failed"),
    ]


def test_failed_deliveries_are_retried_with_the_same_id(rehive, receiver):
    hook = receiver(500, 503)
    rehive.subscribe(hook.url, "transaction.create")
    rehive.credit(user="alice@demo.test", amount=100)
    bodies = wait_for(lambda: len(hook.bodies()) >= 3 and hook.bodies())
    assert len({body["id"] for body in bodies}) == 1
    attempts = wait_for(lambda: len(rehive.control("deliveries")) >= 3 and rehive.control("deliveries"))
    assert [(a["attempt"], a["status"], a["ok"]) for a in attempts] == [
        (1, 500, False),
        (2, 503, False),
        (3, 202, True),
    ]
    assert {a["id"] for a in attempts} == {bodies[0]["id"]}
    assert {a["event"] for a in attempts} == {"transaction.create"}


def test_unreachable_receivers_are_logged_as_errors(rehive, receiver):
    hook = receiver()
    hook.close()  # nothing listens on its port any more
    rehive.subscribe(hook.url, "transaction.create")
    rehive.credit(user="alice@demo.test", amount=100)
    attempts = wait_for(
        lambda: len(rehive.control("deliveries")) == 1 + len(FAST_RETRIES) and rehive.control("deliveries")
    )
    assert all(a["status"] is None and "ConnectionError" in a["error"] for a in attempts)


def test_webhook_tasks_list_the_delivery_history_as_rehive_does(rehive, receiver):
    hook = receiver(500)  # the first attempt of the first delivery fails, its retry succeeds
    gone = receiver()
    gone.close()  # nothing listens: every attempt fails, and the task ends failed
    rehive.subscribe(hook.url, "transaction.create")
    rehive.subscribe(gone.url, "transaction.create")
    before = int(time.time() * 1000)
    tx = rehive.credit(user="alice@demo.test", amount=100).json()["data"]
    wait_for(lambda: len(rehive.control("deliveries")) == 2 + 1 + len(FAST_RETRIES))
    delivered = hook.bodies()[0]

    listed = rehive.call("GET", "admin/webhook-tasks/", params={"webhook__url": hook.url}).json()["data"]
    assert listed["count"] == 1
    item = listed["results"][0]
    assert item["id"] == delivered["id"], "a task's id is the id of the envelope it delivered"
    assert set(item) == {"id", "webhook", "tries", "completed", "failed", "archived", "created", "updated"}
    assert item["webhook"]["url"] == hook.url and item["webhook"]["secret"] == SECRET
    assert (item["tries"], item["failed"]) == (2, None) and item["completed"] >= before
    assert "data" not in item, "a list item carries no payload"

    detail = rehive.call("GET", f"admin/webhook-tasks/{item['id']}/").json()["data"]
    assert detail["data"] == delivered["data"] and detail["data"]["id"] == tx["id"]
    attempts = rehive.call("GET", f"admin/webhook-tasks/{item['id']}/requests/").json()["data"]["results"]
    assert [a["response_code"] for a in attempts] == [500, 202]
    only_500 = rehive.call(
        "GET", f"admin/webhook-tasks/{item['id']}/requests/", params={"response_code": 500}
    )
    assert only_500.json()["data"]["count"] == 1

    def tasks(**params: str) -> list[dict]:
        return rehive.call("GET", "admin/webhook-tasks/", params=params).json()["data"]["results"]

    failed = tasks(webhook__url=gone.url, failed__isnull="false")
    assert len(failed) == 1 and failed[0]["tries"] == 1 + len(FAST_RETRIES) and failed[0]["completed"] is None
    assert len(tasks(completed__isnull="true")) == 1
    assert len(tasks(created__gte=str(before))) == 2
    assert tasks(created__gt=str(int(time.time() * 1000) + 60_000)) == []
    assert tasks(webhook__event="transaction.execute") == []
    assert rehive.call("GET", "admin/webhook-tasks/", params={"created__gte": "soon"}).status_code == 400
    # Another company's service user sees none of it.
    other = rehive.call("GET", f"admin/webhook-tasks/{item['id']}/", token=OTHER_SERVICE_TOKEN)
    assert other.status_code == 404
    assert rehive.call("GET", "admin/webhook-tasks/", token=OTHER_SERVICE_TOKEN).json()["data"]["count"] == 0


# -- idempotency ------------------------------------------------------------------------------------


def test_idempotency_key_replays_the_first_answer(rehive):
    key = {"Idempotency-Key": "credit-once"}
    first = rehive.credit(user="alice@demo.test", amount=111, reference="idem", headers=key)
    second = rehive.credit(user="alice@demo.test", amount=111, reference="idem", headers=key)
    assert first.status_code == second.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert len(rehive.all_transactions(reference="idem")) == 1
    # Another URL, or another company, with the same key is a different request.
    debit = rehive.call(
        "POST",
        "admin/transactions/debit/",
        json={"user": "alice@demo.test", "amount": 1, "currency": "USD"},
        headers=key,
    )
    assert debit.status_code == 201 and "Idempotent-Replayed" not in debit.headers
    other = rehive.call(
        "POST",
        "admin/transactions/credit/",
        token=OTHER_SERVICE_TOKEN,
        headers=key,
        json={"user": "mallory@other.test", "amount": 1, "currency": "USD"},
    )
    assert other.status_code == 201 and "Idempotent-Replayed" not in other.headers


def test_concurrent_twins_with_one_key_execute_once(rehive):
    barrier = threading.Barrier(8)

    def post(_: int) -> requests.Response:
        barrier.wait()
        headers = {"Idempotency-Key": "twins"}
        return rehive.credit(user="bob@demo.test", amount=5, reference="twins", headers=headers)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert {answer.status_code for answer in answers} == {201}
    assert len({answer.text for answer in answers}) == 1
    assert sum("Idempotent-Replayed" in answer.headers for answer in answers) == 7
    assert len(rehive.all_transactions(reference="twins")) == 1


def test_a_twin_waits_for_the_first_answer_instead_of_running():
    cache = IdempotencyCache()
    first_running, release, twin_ran = threading.Event(), threading.Event(), threading.Event()

    def first() -> Response:
        first_running.set()
        release.wait(5)
        return Response("first", status=201)

    def twin() -> Response:
        twin_ran.set()
        return Response("twin", status=201)

    with ThreadPoolExecutor(2) as pool:
        answer = pool.submit(cache.run_once, "scope", first)
        assert first_running.wait(5)
        replay = pool.submit(cache.run_once, "scope", twin)
        # A twin that does not wait runs at once; this window is where it would show.
        assert not twin_ran.wait(0.2)
        release.set()
        assert answer.result(5).get_data() == replay.result(5).get_data() == b"first"
    assert replay.result().headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in answer.result().headers
    assert not twin_ran.is_set()


def test_a_throttled_answer_is_not_saved(rehive):
    key = {"Idempotency-Key": "after-throttle"}
    rehive.control("", {"throttle": True})
    assert rehive.credit(user="alice@demo.test", amount=1, headers=key).status_code == 429
    rehive.control("reset", {})
    retried = rehive.credit(user="alice@demo.test", amount=1, headers=key)
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers


# -- fault knobs ----------------------------------------------------------------------------------


def test_throttle_answers_429_with_retry_after(rehive):
    rehive.control("", {"throttle": True, "throttle_retry_after": 7})
    response = rehive.call("GET", "auth/")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json() == {
        "status": "error",
        "message": "Request was throttled. Expected available in 7 seconds.",
    }
    assert rehive.control()["throttle"] is True  # the control endpoint is never faulted


def test_error_rate_answers_500_in_the_envelope(rehive):
    rehive.control("", {"error_rate": 1})
    response = rehive.call("GET", "auth/")
    assert (response.status_code, response.json()["status"]) == (500, "error")
    rehive.control("", {"error_rate": 0})
    assert rehive.call("GET", "auth/").status_code == 200


def test_down_drops_connections_until_reset(rehive):
    rehive.control("", {"down": True})
    with pytest.raises(requests.ConnectionError):
        rehive.call("GET", "auth/")
    assert rehive.control()["down"] is True
    rehive.control("reset", {})
    assert rehive.call("GET", "auth/").status_code == 200


def test_latency_is_added_to_api_requests(rehive):
    rehive.control("", {"latency_ms": 150})
    assert rehive.call("GET", "auth/").elapsed >= timedelta(milliseconds=150)  # a floor, never a ceiling


@pytest.mark.parametrize(
    "change",
    [
        {"latency_ms": -1},
        {"error_rate": 1.5},
        {"throttle": "yes"},
        {"webhook_retry_delays": [1] * 8},
        {"colour": 1},
    ],
)
def test_invalid_knobs_are_refused(rehive, change):
    response = requests.post(f"{rehive.url}/_control/", json=change, timeout=10)
    assert response.status_code == 400
    assert rehive.control()["latency_ms"] == 0


def test_reset_clears_every_fault_but_keeps_retry_delays(rehive):
    rehive.control(
        "", {"latency_ms": 1, "error_rate": 0.5, "error_status": 400, "throttle": True, "down": True}
    )
    knobs = rehive.control("reset", {})
    assert knobs == {
        "latency_ms": 0,
        "error_rate": 0.0,
        "error_status": 500,
        "throttle": False,
        "throttle_retry_after": 2,
        "down": False,
        "webhook_retry_delays": FAST_RETRIES,
    }


@pytest.mark.parametrize(("address", "status"), [("127.0.0.1", 200), ("::1", 200), ("192.0.2.10", 403)])
def test_control_answers_loopback_callers_only(address, status):
    app = create_app()
    response = app.test_client().get("/_control/", environ_base={"REMOTE_ADDR": address})
    assert response.status_code == status


def test_the_seed_decides_the_data():
    def ids(seed: int) -> list[str]:
        store = platform_of(create_app(seed=seed)).store
        return [user.id for user in store.users_of(None)] + [tx.id for tx in store.transactions_of(None)]

    assert ids(1) == ids(1)
    assert ids(1) != ids(2)


# -- `python -m local_rehive --keep-alive` (gunicorn, HTTP/1.1 keep-alive): how the benchmarks serve it ------


@pytest.fixture
def kept() -> Iterator[Rehive]:
    retries = ",".join(str(delay) for delay in FAST_RETRIES)
    process = start_local_rehive(("--keep-alive", "--webhook-retry-delays", retries))
    yield Rehive(process)  # type: ignore[arg-type] - only its url is used
    process.stop()


def _two_calls_on_one_connection(url: str) -> tuple[list[int], list[str | None], bool]:
    """GET /3/auth/ twice on one http.client connection; return statuses, Connection headers, same socket."""
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    try:
        statuses, headers, sockets = [], [], []
        for _ in range(2):
            connection.request("GET", "/3/auth/", headers={"Authorization": f"Token {ADMIN}"})
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            headers.append(response.getheader("Connection"))
            sockets.append(connection.sock)  # None once the server closed the connection
        return statuses, headers, sockets[0] is not None and sockets[0] is sockets[1]
    finally:
        connection.close()


def test_keep_alive_answers_many_requests_on_one_connection(kept):
    statuses, headers, same_socket = _two_calls_on_one_connection(kept.url)
    assert statuses == [200, 200]
    assert "close" not in [header.lower() for header in headers if header]
    assert same_socket


def test_without_keep_alive_every_connection_is_closed(rehive):
    statuses, headers, same_socket = _two_calls_on_one_connection(rehive.url)
    assert statuses == [200, 200]
    assert headers == ["close", "close"]
    assert not same_socket


def test_fault_knobs_work_on_kept_connections(kept):
    session = requests.Session()  # its pooled connection is reused between the calls below
    url, auth = f"{kept.url}/3/auth/", {"Authorization": f"Token {ADMIN}"}
    assert session.get(url, headers=auth, timeout=10).status_code == 200
    kept.control("", {"throttle": True, "throttle_retry_after": 3})
    throttled = session.get(url, headers=auth, timeout=10)
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "3")
    kept.control("", {"throttle": False, "error_rate": 1})
    assert session.get(url, headers=auth, timeout=10).status_code == 500
    kept.control("", {"error_rate": 0, "down": True})
    with pytest.raises(requests.ConnectionError):
        session.get(url, headers=auth, timeout=10)
    kept.control("reset", {})
    kept.control("", {"latency_ms": 100})
    assert session.get(url, headers=auth, timeout=10).elapsed >= timedelta(milliseconds=100)
    session.close()


def test_keep_alive_still_delivers_webhooks(kept, receiver):
    hook = receiver(500)  # the first attempt fails: the retry carries the same id
    kept.subscribe(hook.url, "transaction.execute")
    kept.credit(user="alice@demo.test", amount=500)
    bodies = wait_for(lambda: len(hook.bodies()) >= 2 and hook.bodies())
    assert bodies[0]["id"] == bodies[1]["id"]
    assert bodies[0]["event"] == "transaction.execute"
