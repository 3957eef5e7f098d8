"""`/_control/`: a loopback-only JSON endpoint to set faults and inspect what the stand-in saw."""

from __future__ import annotations

import ipaddress

from flask import Blueprint, Response, jsonify, request

from local_rehive import shapes
from local_rehive.errors import ApiError
from local_rehive.listing import filter_transactions
from local_rehive.model import User
from local_rehive.state import platform_of
from local_rehive.store import Store

bp = Blueprint("control", __name__, url_prefix="/_control")


def _is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _is_loopback_host(host: str) -> bool:
    """Whether a Host header names this machine: localhost, 127.x or [::1], with or without a port."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return False
    else:
        name, _, port = host.partition(":")
        if port and not port.isdigit():
            return False
    if name in ("localhost", "localhost."):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    return ip.is_loopback and (ip.version == 4 or host.startswith("["))


@bp.before_request
def _loopback_only() -> None:
    """Refuse callers that are not on this machine: the control API is a developer tool.

    A web page the developer visits runs on this machine too: DNS rebinding makes its requests carry a
    foreign Host, and a form or `fetch` without a preflight can only send text/plain or form bodies.
    So the Host must be a loopback name and a body must be declared JSON.
    """
    if not _is_loopback(request.remote_addr):
        raise ApiError(403, "The control API answers loopback callers only.")
    if not _is_loopback_host(request.headers.get("Host", "")):
        raise ApiError(403, "The control API answers requests to a loopback Host only.")
    if request.method not in ("GET", "HEAD", "OPTIONS") and request.mimetype != "application/json":
        raise ApiError(403, "The control API takes JSON bodies only (Content-Type: application/json).")


def _json_object() -> dict:
    body = request.get_json(force=True, silent=True) if request.get_data() else {}
    if not isinstance(body, dict):
        raise ApiError(400, "Send a JSON object.")
    return body


@bp.get("/")
def knobs() -> Response:
    """Return the fault knobs and webhook retry delays."""
    return jsonify(platform_of().knobs.as_json())


@bp.post("/")
def change_knobs() -> Response:
    """Change some knobs, e.g. `{"throttle": true}`; unknown or invalid fields are a 400."""
    changes = _json_object()
    try:
        knobs = platform_of().change_knobs(lambda current: current.updated(changes))
    except (TypeError, ValueError) as exc:
        raise ApiError(400, str(exc)) from None
    return jsonify(knobs.as_json())


@bp.post("/reset")
def reset() -> Response:
    """Switch every fault off (webhook retry delays are kept)."""
    return jsonify(platform_of().change_knobs(lambda current: current.without_faults()).as_json())


@bp.get("/deliveries")
def deliveries() -> Response:
    """Return every webhook delivery attempt, oldest first."""
    return jsonify(platform_of().courier.attempts())


@bp.get("/auth-calls")
def auth_calls() -> Response:
    """Return every `/3/auth/...` request seen, oldest first, with its X-Forwarded-For."""
    return jsonify(platform_of().auth_calls())


@bp.get("/transactions")
def transactions() -> Response:
    """Return the transactions of `?company=` (default: every company) as admin objects, filtered."""
    store = platform_of().store
    company = request.args.get("company")
    with store.lock:
        kept = filter_transactions(store, company, store.transactions_of(company), request.args)
        return jsonify([shapes.admin_transaction(store, tx, extended=True) for tx in kept])


@bp.get("/users")
def users() -> Response:
    """Return the users of `?company=` (default: every company) with their group and primary account."""
    store = platform_of().store
    with store.lock:
        return jsonify([_user_row(store, user) for user in store.users_of(request.args.get("company"))])


def _user_row(store: Store, user: User) -> dict:
    primary = next(a for a in store.accounts_of(user.company, user_id=user.id) if a.primary)
    return {
        "id": user.id,
        "email": user.email,
        "company": user.company,
        "group": user.group,
        "account": primary.reference,
    }


@bp.post("/tokens")
def issue_token() -> tuple[Response, int]:
    """Issue a token for `{company, user, expires_in?}` (seconds; 0 or less gives an expired one)."""
    body = _json_object()
    store = platform_of().store
    company, identifier = body.get("company"), body.get("user")
    user = (
        store.find_user(company, identifier)
        if isinstance(company, str) and isinstance(identifier, str)
        else None
    )
    if user is None:
        raise ApiError(400, "Give the `company` and `user` (email, username or id) of an existing user.")
    expires_in = body.get("expires_in")
    if expires_in is not None and (not isinstance(expires_in, int | float) or isinstance(expires_in, bool)):
        raise ApiError(400, "expires_in must be a number of seconds or null.")
    token, record = store.issue_token(user, expires_in)
    return jsonify({"token": token, "user": user.id, "expires": record.expires}), 201
