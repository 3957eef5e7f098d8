"""GET /custom/transactions/: a user sees their own transactions, read with the admin token."""

import json

import pytest
import requests
from responses import matchers

from tests.conftest import ADMIN_TOKEN, API, rehive_user

AUTH = API + "auth/"
LIST = API + "admin/transactions/"
USER = {"Authorization": "Token user-tok"}


def page(results=(), count=None, next_url=None, previous_url=None) -> dict:
    results = list(results)
    return {
        "status": "success",
        "data": {
            "count": len(results) if count is None else count,
            "next": next_url,
            "previous": previous_url,
            "results": results,
        },
    }


def signed_in(rsps, group="user", user_id="u-alice"):
    rsps.get(AUTH, json={"status": "success", "data": rehive_user(user_id, group=group)})


def admin_list(rsps, query, body=None, **kwargs):
    """Expect one admin list call with exactly `query`, sent with the admin token."""
    rsps.get(
        LIST,
        json=body or page([{"id": "tx-1", "amount": 500}]),
        match=[
            matchers.query_param_matcher(query),
            matchers.header_matcher({"Authorization": f"Token {ADMIN_TOKEN}"}),
        ],
        **kwargs,
    )


def test_a_user_gets_their_own_transactions_in_rehives_envelope(client, rsps):
    signed_in(rsps)
    admin_list(rsps, {"user": "u-alice"})
    response = client.get("/custom/transactions/", headers=USER)
    assert response.status_code == 200
    assert response.json == {
        "status": "success",
        "data": {"count": 1, "next": None, "previous": None, "results": [{"id": "tx-1", "amount": 500}]},
    }


def test_both_paths_are_served_without_a_redirect(client, rsps):
    signed_in(rsps)
    admin_list(rsps, {"user": "u-alice"})
    admin_list(rsps, {"user": "u-alice"})
    assert client.get("/custom/transactions", headers=USER).status_code == 200
    assert client.get("/custom/transactions/", headers=USER).status_code == 200


@pytest.mark.parametrize("widening", ["u-bob", "", "u-alice,u-bob"])
def test_a_user_cannot_widen_their_view_with_user(client, rsps, widening):
    signed_in(rsps)
    admin_list(rsps, {"user": "u-alice", "status": "Complete"})
    response = client.get(f"/custom/transactions/?user={widening}&status=Complete", headers=USER)
    assert response.status_code == 200


@pytest.mark.parametrize("group", ["admin", "support"])
def test_the_all_groups_may_list_everyone_and_filter_by_user(settings, rsps, group):
    from app import create_app

    app = create_app(settings.replace(transactions_all_groups=frozenset({"admin", "support"})))
    client = app.test_client()
    signed_in(rsps, group=group)
    admin_list(rsps, {})
    admin_list(rsps, {"user": "u-bob"})
    assert client.get("/custom/transactions/", headers=USER).status_code == 200
    assert client.get("/custom/transactions/?user=u-bob", headers=USER).status_code == 200


def test_allowed_filters_pass_through(client, rsps):
    query = {
        "status": "Complete",
        "status__in": "Complete,Pending",
        "tx_type": "credit",
        "subtype": "deposit",
        "currency": "USD",
        "account": "0000000001",
        "created__gt": "1700000000000",
        "created__lt": "1800000000000",
        "updated__gt": "1700000000000",
        "updated__lt": "1800000000000",
        "orderby": "-created",
        "page": "2",
        "page_size": "50",
    }
    signed_in(rsps)
    admin_list(rsps, {**query, "user": "u-alice"})
    assert client.get("/custom/transactions/", query_string=query, headers=USER).status_code == 200


def test_a_large_page_size_is_sent_as_250(client, rsps):
    signed_in(rsps)
    admin_list(rsps, {"user": "u-alice", "page_size": "250"})
    assert client.get("/custom/transactions/?page_size=100000", headers=USER).status_code == 200


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("format=csv", "format"),
        ("search=bob", "search"),
        ("user__exclude=u-alice", "user__exclude"),
        ("group=admin", "group"),
        ("pagination=cursor", "pagination"),
        ("zeta=1&alpha=2", "alpha, zeta"),
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=two", "page"),
        ("page_size=0", "page_size"),
        ("status=a&status=b", "status"),
        ("status=" + "x" * 300, "status"),
    ],
)
def test_bad_parameters_are_a_400_that_names_them_and_nothing_is_fetched(client, rsps, query, named):
    signed_in(rsps)
    response = client.get(f"/custom/transactions/?{query}", headers=USER)
    assert response.status_code == 400
    assert response.json["status"] == "error"
    assert named in response.json["message"]
    assert [call.request.url for call in rsps.calls] == [AUTH]


def test_pagination_links_point_at_this_service_with_the_callers_query(client, rsps):
    signed_in(rsps)
    admin_list(
        rsps,
        {"user": "u-alice", "status": "Complete", "page": "2", "page_size": "10"},
        body=page(
            count=35,
            next_url=LIST + "?page=3&page_size=10&status=Complete&user=u-alice",
            previous_url=LIST + "?page_size=10&status=Complete&user=u-alice",
        ),
    )
    response = client.get(
        "/custom/transactions?status=Complete&page=2&page_size=10",
        headers={**USER, "Host": "wallet.example.test"},
    )
    data = response.json["data"]
    assert (
        data["next"] == "http://wallet.example.test/custom/transactions/?status=Complete&page_size=10&page=3"
    )
    assert data["previous"] == "http://wallet.example.test/custom/transactions/?status=Complete&page_size=10"
    assert "rehive" not in json.dumps(data) and "user=" not in json.dumps(data)


def test_links_behind_a_trusted_proxy_use_the_public_scheme_and_host(settings, rsps):
    from app import create_app

    client = create_app(settings.replace(trusted_proxies=1)).test_client()
    signed_in(rsps)
    admin_list(rsps, {"user": "u-alice"}, body=page(count=40, next_url=LIST + "?page=2&user=u-alice"))
    response = client.get(
        "/custom/transactions/",
        headers={**USER, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.wallet.test"},
    )
    assert response.json["data"]["next"] == "https://api.wallet.test/custom/transactions/?page=2"


UPSTREAM = [
    pytest.param(
        {"status": 401, "json": {"status": "error", "message": "Invalid token."}}, 502, id="admin 401"
    ),
    pytest.param({"status": 403, "json": {"status": "error", "message": "No."}}, 502, id="admin 403"),
    pytest.param({"status": 500, "json": {"status": "error", "message": "x"}}, 503, id="500"),
    pytest.param({"body": requests.ReadTimeout()}, 504, id="timeout"),
    pytest.param(
        {"status": 404, "json": {"status": "error", "message": "Invalid page."}}, 404, id="404 page"
    ),
    pytest.param({"status": 400, "json": {"status": "error", "message": "Bad date."}}, 400, id="400"),
    pytest.param({"status": 200, "json": {"status": "success", "data": {"count": 1}}}, 502, id="no results"),
    pytest.param({"status": 200, "body": "<html>"}, 502, id="html"),
]


@pytest.mark.parametrize(("answer", "expected"), UPSTREAM)
def test_admin_call_failures_map_to_their_status(client, rsps, answer, expected):
    signed_in(rsps)
    rsps.get(LIST, **answer)
    response = client.get("/custom/transactions/", headers=USER)
    assert response.status_code == expected
    assert response.json["status"] == "error"
    assert "WWW-Authenticate" not in response.headers
    if expected == 502 and answer.get("status") in (401, 403):
        assert "misconfigured" in response.json["message"]


def test_admin_call_throttled_passes_retry_after(client, rsps):
    signed_in(rsps)
    rsps.get(LIST, status=429, headers={"Retry-After": "12"}, json={"status": "error", "message": "slow"})
    response = client.get("/custom/transactions/", headers=USER)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "12"


def test_admin_call_outage_is_503(client, rsps):
    signed_in(rsps)
    for _ in range(3):
        rsps.get(LIST, body=requests.ConnectionError("refused"))
    assert client.get("/custom/transactions/", headers=USER).status_code == 503


def test_the_admin_token_never_reaches_the_caller(client, rsps, caplog):
    signed_in(rsps)
    rsps.get(LIST, status=401, json={"status": "error", "message": f"Invalid token {ADMIN_TOKEN}"})
    signed_in(rsps, user_id="u-bob")
    admin_list(rsps, {"user": "u-bob"})
    responses_seen = [
        client.get("/custom/transactions/", headers=USER),
        client.get("/custom/transactions/", headers={"Authorization": "Token other"}),
        client.get("/custom/transactions/?nope=1", headers={"Authorization": "Token other"}),
        client.get("/custom/transactions/"),
    ]
    for response in responses_seen:
        assert ADMIN_TOKEN not in response.get_data(as_text=True)
        assert ADMIN_TOKEN not in str(response.headers)
    assert ADMIN_TOKEN not in caplog.text


def test_cors_allows_only_configured_origins(settings, rsps):
    from app import create_app

    client = create_app(settings.replace(cors_origins=("https://app.example.test",))).test_client()
    preflight = client.options(
        "/custom/transactions/",
        headers={"Origin": "https://app.example.test", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.test"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    other = client.options("/custom/transactions/", headers={"Origin": "https://evil.test"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Origin" in other.headers["Vary"]


def test_errors_of_every_kind_are_json(client):
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert set(missing.json) == {"status", "message"} and missing.json["status"] == "error"
    response = client.post("/custom/transactions/")
    assert response.status_code == 405
    assert response.json["status"] == "error"
    assert "GET" in response.headers["Allow"]


def test_healthz_needs_no_upstream(client, rsps):
    response = client.get("/healthz")
    assert (response.status_code, response.json) == (200, {"status": "ok"})
    assert len(rsps.calls) == 0


def test_the_openapi_document_is_served(client):
    response = client.get("/openapi.yaml")
    assert response.status_code == 200
    assert response.mimetype == "application/yaml"
    assert b"/custom/transactions/:" in response.data and b"/webhooks/:" in response.data


@pytest.mark.parametrize(
    "path", ["/custom//transactions/", "/custom/transactions/x", "//custom/transactions/"]
)
def test_near_miss_paths_are_json_404s_not_redirects(client, rsps, path):
    response = client.get(path, headers=USER)
    assert response.status_code == 404
    assert response.json["status"] == "error"
