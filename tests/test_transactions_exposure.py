"""What a caller of GET /custom/transactions/ may see: the user-section shape, and never from a cache."""

import pytest
from flask import Flask

from app import create_app
from tests.conftest import API
from tests.test_transactions import LIST, USER, page, signed_in

AUTH = API + "auth/"

PARTNER = {
    "id": "tx-partner",
    "user": {
        "id": "u-bob",
        "identifier": "bob",
        "username": "bob",
        "first_name": "Bob",
        "middle_name": "",
        "last_name": "Builder",
        "profile": None,
        "temporary": False,
        "email": "bob@secret.test",
        "mobile": "+27000000000",
        "groups": [{"name": "user"}],
    },
    "account": "ACC-BOB-0001",
    "balance": 123,
}
ADMIN_TX = {
    "id": "tx-1",
    "collection": "col-1",
    "parent": None,
    "partner": PARTNER,
    "index": 0,
    "tx_type": "credit",
    "subtype": None,
    "note": "",
    "metadata": {},
    "status": "Complete",
    "reference": None,
    "amount": 500,
    "fee": 0,
    "total_amount": 500,
    "balance": 1500,
    "label": "Credit",
    "account": "ACC-ALICE-0001",
    "currency": {"code": "USD", "divisibility": 2},
    "account_currency": {"id": "ac-1"},
    "user": {"id": "u-alice", "email": "alice@example.test", "mobile": "+27111"},
    "creator": {"id": "u-admin", "email": "admin@example.test"},
    "inclusive": False,
    "archived": False,
    "executed": 1,
    "expires": None,
    "created": 1,
    "updated": 1,
    "a_field_rehive_adds_in_2027": "secret",
}


def _listed(client, rsps, tx, group="user"):
    signed_in(rsps, group=group)
    rsps.get(LIST, json=page([tx]))
    response = client.get("/custom/transactions/", headers=USER)
    assert response.status_code == 200
    return response.json["data"]["results"][0]


def test_a_user_sees_only_the_user_section_fields_and_a_reduced_partner(client, rsps):
    result = _listed(client, rsps, ADMIN_TX)
    assert set(result) == set(ADMIN_TX) - {
        "user",
        "creator",
        "index",
        "archived",
        "a_field_rehive_adds_in_2027",
    }
    assert result["partner"] == {
        "id": "tx-partner",
        "user": {
            "id": "u-bob",
            "identifier": "bob",
            "username": "bob",
            "first_name": "Bob",
            "middle_name": "",
            "last_name": "Builder",
            "profile": None,
            "temporary": False,
        },
    }
    text = str(result)
    for hidden in ("bob@secret.test", "+27000000000", "ACC-BOB-0001", "alice@example.test", "2027"):
        assert hidden not in text


@pytest.mark.parametrize(
    ("partner", "expected"),
    [
        pytest.param(None, None, id="null"),
        pytest.param("tx-partner", None, id="a bare id"),
        pytest.param({"id": "p", "account": "ACC"}, {"id": "p", "user": None}, id="no user"),
        pytest.param({"id": "p", "user": "u-bob"}, {"id": "p", "user": None}, id="user not an object"),
    ],
)
def test_the_partner_is_null_or_exactly_the_reduced_shape(client, rsps, partner, expected):
    assert _listed(client, rsps, {**ADMIN_TX, "partner": partner})["partner"] == expected


def test_the_all_groups_keep_the_admin_shape(client, rsps):
    assert _listed(client, rsps, ADMIN_TX, group="admin") == ADMIN_TX


def test_a_result_that_is_not_an_object_is_a_bad_answer(client, rsps):
    signed_in(rsps)
    rsps.get(LIST, json=page(["tx-1"]))
    assert client.get("/custom/transactions/", headers=USER).status_code == 502


@pytest.fixture
def app(settings) -> Flask:
    return create_app(settings.replace(auth_cache_seconds=0))


@pytest.mark.parametrize(
    ("path", "headers", "answer", "status"),
    [
        pytest.param("/custom/transactions/", USER, {"json": page()}, 200, id="200"),
        pytest.param("/custom/transactions/", {}, None, 401, id="401 no header"),
        pytest.param(
            "/custom/transactions/",
            USER,
            {"status": 403, "json": {"status": "error", "message": "MFA"}},
            403,
            id="403",
        ),
        pytest.param(
            "/custom/transactions/",
            USER,
            {"status": 429, "headers": {"Retry-After": "3"}, "json": {"status": "error", "message": "slow"}},
            429,
            id="429",
        ),
        pytest.param("/custom/transactions/?nope=1", USER, "auth only", 400, id="400"),
        pytest.param("/custom/nothing-here", {}, None, 404, id="404"),
        pytest.param("/custom", {}, None, 404, id="prefix alone"),
    ],
)
def test_every_custom_answer_is_no_store(client, rsps, path, headers, answer, status):
    if answer == "auth only":
        signed_in(rsps)
    elif answer is not None and status == 200:
        signed_in(rsps)
        rsps.get(LIST, **answer)
    elif answer is not None:
        rsps.get(AUTH, **answer)
    response = client.get(path, headers=headers)
    assert response.status_code == status
    assert response.headers["Cache-Control"] == "no-store"


def test_a_405_on_a_custom_path_is_no_store(client):
    response = client.post("/custom/transactions/")
    assert response.status_code == 405
    assert response.headers["Cache-Control"] == "no-store"


def test_other_answers_are_left_alone(client):
    assert "Cache-Control" not in client.get("/healthz").headers
