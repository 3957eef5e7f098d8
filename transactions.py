"""`GET /custom/transactions/`: a user's transactions, read with the admin token on their behalf."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlencode, urlsplit

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from auth import current_user, group_names, require_user
from errors import ApiError
from quota import per_user
from rehive_client import RehiveBadResponse, admin

bp = Blueprint("custom", __name__, url_prefix="/custom")

MAX_PAGE_SIZE = 250
_RANGES = ("", "__gt", "__gte", "__lt", "__lte")
# Filters Rehive's /3/admin/transactions/ documents that only narrow a list; `user` is handled apart.
ALLOWED_PARAMS = frozenset(
    {
        "page",
        "page_size",
        "orderby",
        "id",
        "id__in",
        "collection",
        "parent",
        "partner__isnull",
        "tx_type",
        "subtype",
        "subtype__in",
        "subtype__exclude",
        "status",
        "status__in",
        "currency",
        "account",
        "account__name",
        "reference",
        *(f"{field}{suffix}" for field in ("amount", "created", "updated", "executed") for suffix in _RANGES),
    }
)
# What Rehive's own user API (`GET /3/transactions/`) shows a user of a transaction: the admin shape
# minus `user`, `creator`, `index` and `archived`. An allow-list, so a field Rehive adds to the admin
# shape later stays hidden until someone decides a user may see it.
USER_FIELDS = (
    "id",
    "collection",
    "parent",
    "partner",
    "tx_type",
    "subtype",
    "note",
    "metadata",
    "status",
    "reference",
    "amount",
    "fee",
    "total_amount",
    "balance",
    "label",
    "account",
    "currency",
    "account_currency",
    "inclusive",
    "executed",
    "expires",
    "created",
    "updated",
)
# The counterparty as Rehive's user API shows it (no email, mobile or account since 2021).
PARTNER_USER_FIELDS = (
    "id",
    "identifier",
    "username",
    "first_name",
    "middle_name",
    "last_name",
    "profile",
    "temporary",
)
_POSITIVE_INT = re.compile(r"[1-9][0-9]{0,8}")
MAX_VALUE_LENGTH = 256


def _caller_query() -> dict[str, str]:
    """Return the caller's query as a dict, refusing unknown, repeated or oversized parameters."""
    query: dict[str, str] = {}
    unknown = sorted(name for name in request.args if name not in ALLOWED_PARAMS and name != "user")
    if unknown:
        raise ApiError(400, "Unknown query parameter: " + ", ".join(unknown) + ".")
    for name, values in request.args.lists():
        if len(values) > 1:
            raise ApiError(400, f"Query parameter given more than once: {name}.")
        value = values[0]
        if len(value) > MAX_VALUE_LENGTH:
            raise ApiError(400, f"Query parameter too long: {name}.")
        if name in ("page", "page_size") and not _POSITIVE_INT.fullmatch(value):
            raise ApiError(400, f"Query parameter {name} must be a positive integer.")
        query[name] = value
    return query


def user_transaction(tx: dict) -> dict:
    """Return the user-section view of an admin transaction: allow-listed fields, a reduced partner."""
    kept = {name: tx[name] for name in USER_FIELDS if name in tx}
    if "partner" in kept:
        kept["partner"] = _user_partner(kept["partner"])
    return kept


def _user_partner(partner: object) -> dict | None:
    if not isinstance(partner, dict):
        return None
    user = partner.get("user")
    return {
        "id": partner.get("id"),
        "user": {name: user.get(name) for name in PARTNER_USER_FIELDS} if isinstance(user, dict) else None,
    }


def _link(rehive_url: object, own_query: dict[str, str]) -> str | None:
    """Rewrite Rehive's next/previous URL as this endpoint's URL with the caller's query."""
    if not isinstance(rehive_url, str) or not rehive_url:
        return None
    page = parse_qs(urlsplit(rehive_url).query).get("page", ["1"])[0]
    query = {name: value for name, value in own_query.items() if name != "page"}
    if page != "1":  # DRF leaves page out of the link to page 1
        query["page"] = page
    base = url_for("custom.list_transactions", _external=True)
    return f"{base}?{urlencode(query)}" if query else base


@bp.get("/transactions/", strict_slashes=False)
@require_user
@per_user
def list_transactions() -> Response:
    """List transactions: the caller's own, or anyone's for the groups allowed to see all."""
    query = _caller_query()
    settings = current_app.config["SETTINGS"]
    sees_all = bool(group_names(current_user) & settings.transactions_all_groups)
    if not sees_all:
        # Whatever the caller sent, they see only their own transactions.
        query.pop("user", None)
    upstream = dict(query)
    if not sees_all:
        upstream["user"] = current_user["id"]
    if "page_size" in upstream and int(upstream["page_size"]) > MAX_PAGE_SIZE:
        upstream["page_size"] = str(MAX_PAGE_SIZE)

    body = admin.get("admin/transactions/", params=upstream)
    data = body.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise RehiveBadResponse("Rehive's transaction list has no results", body=body)
    results = data["results"]
    if not sees_all:
        if not all(isinstance(tx, dict) for tx in results):
            raise RehiveBadResponse("Rehive's transaction list holds a non-object", body=body)
        results = [user_transaction(tx) for tx in results]
    return jsonify(
        status="success",
        data={
            "count": data.get("count"),
            "next": _link(data.get("next"), query),
            "previous": _link(data.get("previous"), query),
            "results": results,
        },
    )


@bp.after_app_request
def _no_store(response: Response) -> Response:
    """Keep every answer of a custom endpoint (errors, 401, 403, 429 included) out of every cache."""
    if request.path == bp.url_prefix or request.path.startswith(bp.url_prefix + "/"):
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.after_request
def _cors(response: Response) -> Response:
    """Let the browser origins in CORS_ORIGINS call the custom endpoints."""
    origin = request.headers.get("Origin")
    if origin and origin in current_app.config["SETTINGS"].cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Headers"] = "Authorization"
        response.headers["Access-Control-Allow-Methods"] = "GET, OPTIONS"
        response.headers["Access-Control-Max-Age"] = "600"
    response.vary.add("Origin")
    return response
