"""The example handler: auto-savings on completed credits, proved by what it sends to Rehive."""

from __future__ import annotations

import time

import pytest
from responses import matchers

from app import create_app
from tests.conftest import API, COMPANY, WEBHOOK_SECRET, webhook_body
from webhooks import Event, WorkerPool, webhooks_of
from webhooks.savings import auto_savings, savings_amount, savings_percent_for

USER = "u-alice"
MAIN = "ACC-MAIN"
SAVINGS = "ACC-SAVE"
ACCOUNTS = API + "admin/accounts/"
TRANSACTIONS = API + "admin/transactions/"
TRANSFER = API + "admin/transactions/transfer/"
TX = "tx-1"
REFERENCE = f"savings:{TX}"
KEY = f"acme:{TX}:savings-transfer"


def credit(**changes: object) -> dict:
    """A `transaction.execute` payload for a completed plain credit of 12.34 USD to alice."""
    tx = {
        "id": TX,
        "tx_type": "credit",
        "status": "Complete",
        "partner": None,
        "amount": 1234,
        "account": MAIN,
        "currency": {"code": "USD", "divisibility": 2},
        "account_currency": {"id": "ac-1", "account": {"reference": MAIN, "name": "default"}},
        "user": {"id": USER, "email": "alice@example.test"},
    }
    tx.update(changes)
    return tx


@pytest.fixture
def app(settings):
    return create_app(settings.replace(savings_percent=10))


def _event(event_id: str = "evt-1", **changes: object) -> Event:
    return Event(company=COMPANY, id=event_id, name="transaction.execute", data=credit(**changes))


def _run(app, event: Event) -> None:
    from rehive_client import admin

    with app.app_context():
        auto_savings(event, admin.client(app))


def _detail(rsps, tx_id: str = TX, http_status: int = 200, **changes: object) -> None:
    """Rehive's own copy of the transaction (the payload is only a hint)."""
    body = {"status": "success", "data": credit(id=tx_id, **changes)}
    if http_status != 200:
        body = {"status": "error", "message": "Not found."}
    rsps.get(f"{TRANSACTIONS}{tx_id}/", status=http_status, json=body)


def _saved_before(rsps, *results: dict, reference: str = REFERENCE) -> None:
    rsps.get(
        TRANSACTIONS,
        json={"status": "success", "data": {"count": len(results), "next": None, "results": list(results)}},
        match=[matchers.query_param_matcher({"reference": reference})],
    )


def _ready(rsps, *, amount: int | None = None) -> None:
    """Mock the reads before a transfer: the transaction, the savings account, no earlier transfer."""
    _detail(rsps, **({} if amount is None else {"amount": amount}))
    _accounts(rsps, {"reference": SAVINGS, "name": "savings"})
    _saved_before(rsps)


def _accounts(rsps, *results: dict) -> None:
    rsps.get(
        ACCOUNTS,
        json={"status": "success", "data": {"count": len(results), "next": None, "results": list(results)}},
        match=[matchers.query_param_matcher({"user": USER, "name": "savings"})],
    )


def _transfer(rsps, amount: int, key: str = KEY, credit_account: str = SAVINGS, status: int = 201) -> None:
    rsps.post(
        TRANSFER,
        status=status,
        json={"status": "success", "data": {"id": "tx-t"}} if status < 300 else {"status": "error"},
        match=[
            matchers.json_params_matcher(
                {
                    "user": USER,
                    "recipient": USER,
                    "amount": amount,
                    "currency": "USD",
                    "debit_account": MAIN,
                    "credit_account": credit_account,
                    "debit_reference": REFERENCE,
                    "credit_reference": REFERENCE,
                }
            ),
            matchers.header_matcher({"Idempotency-Key": key}),
        ],
    )


@pytest.mark.parametrize(("amount", "saved"), [(1234, 123), (10, 1), (1_000_000_000_001, 100_000_000_000)])
def test_ten_percent_rounded_down_moves_to_the_existing_savings_account(app, rsps, amount, saved):
    _ready(rsps, amount=amount)
    _transfer(rsps, saved)
    _run(app, _event(amount=amount))


def test_the_savings_account_is_created_the_first_time(app, rsps):
    _detail(rsps)
    _accounts(rsps)
    rsps.post(
        ACCOUNTS,
        status=201,
        json={"status": "success", "data": {"reference": "ACC-NEW", "name": "savings"}},
        match=[
            matchers.json_params_matcher({"user": USER, "name": "savings", "primary": False}),
            matchers.header_matcher({"Idempotency-Key": f"acme:{USER}:savings-account"}),
        ],
    )
    _saved_before(rsps)
    _transfer(rsps, 123, credit_account="ACC-NEW")
    _run(app, _event())


def test_two_first_credits_of_one_user_ask_for_the_account_with_one_key(app, rsps):
    for tx_id in ("tx-1", "tx-2"):
        _detail(rsps, tx_id)
        _accounts(rsps)
        rsps.post(ACCOUNTS, status=201, json={"status": "success", "data": {"reference": SAVINGS}})
        _saved_before(rsps, reference=f"savings:{tx_id}")
        rsps.post(TRANSFER, status=201, json={"status": "success", "data": {}})
    _run(app, _event("evt-1"))
    _run(app, _event("evt-2", id="tx-2"))
    keys = [call.request.headers["Idempotency-Key"] for call in rsps.calls if call.request.method == "POST"]
    account_key = f"acme:{USER}:savings-account"
    assert keys == [account_key, "acme:tx-1:savings-transfer", account_key, "acme:tx-2:savings-transfer"]


def test_a_rerun_sends_the_same_transfer_key(app, rsps):
    for _ in range(2):
        _ready(rsps)
        _transfer(rsps, 123)
    _run(app, _event("evt-9"))
    _run(app, _event("evt-9"))
    keys = [
        call.request.headers.get("Idempotency-Key") for call in rsps.calls if call.request.method == "POST"
    ]
    assert keys == [KEY] * 2


def test_two_deliveries_of_one_credit_with_different_ids_move_money_once(app, rsps):
    # Two subscriptions (`/webhooks/` and `/webhooks`), a rotation or a re-sent event: new ids, one credit.
    _ready(rsps)
    _transfer(rsps, 123)
    _detail(rsps)
    _accounts(rsps, {"reference": SAVINGS, "name": "savings"})
    _saved_before(rsps, {"id": "tx-leg", "reference": REFERENCE, "amount": -123})
    _run(app, _event("evt-1"))
    _run(app, _event("evt-2"))
    assert [call.request.url for call in rsps.calls if call.request.method == "POST"] == [TRANSFER]


def test_the_transfer_key_is_the_same_for_every_delivery_of_one_credit(app, rsps):
    # Two workers that both find no earlier transfer: Rehive replays the first answer to the second.
    for _ in range(2):
        _ready(rsps)
        _transfer(rsps, 123)
    _run(app, _event("evt-1"))
    _run(app, _event("evt-2"))


def test_rehives_amount_wins_over_a_forged_one(app, rsps):
    _ready(rsps, amount=1234)
    _transfer(rsps, 123)
    _run(app, _event(amount=99_999_999, user={"id": "u-mallory"}, account="ACC-MALLORY"))


def test_a_transaction_rehive_does_not_know_moves_nothing(app, rsps, caplog):
    _detail(rsps, http_status=404)
    _run(app, _event())  # the strict mock fails on any further call
    assert "Rehive has no such transaction" in caplog.text


def test_a_transaction_that_is_no_completed_credit_at_rehive_moves_nothing(app, rsps):
    _detail(rsps, status="Pending")
    _run(app, _event())


@pytest.mark.parametrize("tx_id", ["", "../accounts", "tx/1", "tx?x=1", 7, None, "x" * 101])
def test_an_event_without_a_usable_transaction_id_causes_no_call(app, rsps, tx_id):
    _run(app, _event(id=tx_id))


def test_a_long_event_id_does_not_change_the_transfer_key(app, rsps):
    _ready(rsps)
    _transfer(rsps, 123)
    _run(app, _event("e" * 100))


def test_a_long_transaction_id_gets_a_hashed_key_under_100_characters(app, rsps):
    tx_id = "t" * 100
    _detail(rsps, tx_id)
    _accounts(rsps, {"reference": SAVINGS, "name": "savings"})
    _saved_before(rsps, reference=f"savings:{tx_id}")
    rsps.post(TRANSFER, status=201, json={"status": "success", "data": {}})
    _run(app, _event(id=tx_id))
    key = rsps.calls[-1].request.headers["Idempotency-Key"]
    assert key.startswith("sha256~")
    assert len(key) < 100


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"tx_type": "debit", "amount": -1234}, id="debit"),
        pytest.param({"status": "Pending"}, id="pending"),
        pytest.param({"status": "Failed"}, id="failed"),
        pytest.param({"partner": {"id": "tx-0", "user": {"id": USER}}}, id="leg of a transfer"),
    ],
)
def test_events_that_are_no_completed_credit_cause_no_call(app, rsps, changes):
    _run(app, _event(**changes))  # the strict mock fails on any call


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"amount": 9}, id="share rounds to zero"),
        pytest.param({"amount": 0}, id="zero"),
        pytest.param({"amount": "1234"}, id="amount not an integer"),
        pytest.param(
            {"account": SAVINGS, "account_currency": {"account": {"reference": SAVINGS, "name": "savings"}}},
            id="credit to the savings account",
        ),
        pytest.param({"user": None}, id="no user"),
    ],
)
def test_credits_that_are_not_saved_cause_no_call_after_reading_them(app, rsps, changes):
    _detail(rsps, **changes)
    _run(app, _event())  # the strict mock fails on any other call


def test_a_credit_to_the_savings_account_found_by_reference_is_not_saved(app, rsps):
    _detail(rsps, account_currency=None)
    _accounts(rsps, {"reference": MAIN, "name": "savings"})
    _run(app, _event(account_currency=None))


def test_an_account_list_that_ignores_the_filter_is_not_trusted(app, rsps):
    _detail(rsps)
    _accounts(rsps, {"reference": "ACC-OTHER", "name": "holiday"})
    rsps.post(ACCOUNTS, status=201, json={"status": "success", "data": {"reference": SAVINGS}})
    _saved_before(rsps)
    _transfer(rsps, 123)
    _run(app, _event())


def test_a_transaction_list_that_ignores_the_reference_filter_is_not_trusted(app, rsps):
    _detail(rsps)
    _accounts(rsps, {"reference": SAVINGS, "name": "savings"})
    _saved_before(rsps, {"id": "tx-other", "reference": "salary"}, {"id": "tx-x", "reference": None})
    _transfer(rsps, 123)
    _run(app, _event())


def test_with_zero_percent_the_handler_does_nothing(settings, rsps):
    app = create_app(settings.replace(savings_percent=0))
    _run(app, _event())  # the strict mock: no call to Rehive


def test_the_companys_own_percent_wins_over_the_setting(settings, rsps):
    app = create_app(settings.replace(savings_percent=0))
    webhooks_of(app).inbox.set_company_setting(COMPANY, "savings_percent", 25)
    webhooks_of(app).inbox.set_company_setting("other", "savings_percent", 0)
    _ready(rsps)
    _transfer(rsps, 308)  # 25 % of 1234, rounded down
    _run(app, _event())
    with app.app_context():
        assert savings_percent_for(COMPANY) == 25
        assert savings_percent_for("other") == 0
        assert savings_percent_for("never-set") == 0


def test_a_delivery_is_saved_once_and_a_failed_transfer_is_retried_with_the_same_key(app, rsps):
    assert auto_savings in webhooks_of(app).registry.handlers_for("transaction.execute")
    client = app.test_client()
    headers = {"Authorization": f"Secret {WEBHOOK_SECRET}"}
    body = webhook_body(event_id=501, data=credit())
    _ready(rsps)
    _transfer(rsps, 123, status=503)
    _ready(rsps)
    _transfer(rsps, 123)

    assert client.post("/webhooks/", headers=headers, json=body).status_code == 202
    state = webhooks_of(app)
    now = [time.time() + 1]
    pool = WorkerPool(app, state.inbox, state.registry, threads=1, clock=lambda: now[0])
    assert pool.drain() == 1
    [row] = state.inbox.get("501")
    assert row["status"] == "failed"
    assert row["last_error"].startswith("RehiveUnavailable")
    assert pool.drain() == 0  # not before its retry time
    now[0] += app.config["SETTINGS"].webhook_retry_first_seconds
    assert pool.drain() == 1
    assert client.post("/webhooks/", headers=headers, json=body).status_code == 200
    assert pool.drain() == 0
    assert state.inbox.get("501")[0]["status"] == "done"
    assert len(rsps.calls) == 8


def test_the_transfers_own_credit_leg_does_not_trigger_another_transfer(app, rsps):
    leg = credit(
        amount=123,
        account=SAVINGS,
        partner={"id": "tx-debit-leg", "user": {"id": USER}},
        account_currency={"account": {"reference": SAVINGS, "name": "savings"}},
    )
    _run(app, Event(company=COMPANY, id="evt-leg", name="transaction.execute", data=leg))


def test_savings_amount_is_integer_arithmetic():
    assert savings_amount(1234, 10) == 123
    assert savings_amount(9, 10) == 0
    assert savings_amount(10**18 + 7, 33) == (10**18 + 7) * 33 // 100
