"""The `/3/` API: auth, transactions, accounts and webhooks, in Rehive's shapes and envelopes."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, g, jsonify, request

from local_rehive import shapes
from local_rehive.courier import Task
from local_rehive.errors import ApiError, error_response, field_error
from local_rehive.listing import filter_accounts, filter_transactions, filter_webhook_tasks, paginate
from local_rehive.model import ADMIN_GROUPS, COMPLETE, EVENTS, STATUSES, Leg, Movement, Transfer, User, now_ms
from local_rehive.state import platform_of
from local_rehive.store import Store

bp = Blueprint("api", __name__, url_prefix="/3")

INVALID_TOKEN = "Invalid token."  # noqa: S105 - an error message, not a secret
NO_PERMISSION = "You do not have permission to perform this action."
REQUIRED = "This field is required."
MAX_IDEMPOTENCY_KEY = 100
MUTATING = frozenset({"POST", "PUT", "PATCH"})


def _store() -> Store:
    return platform_of().store


def _ok(data: Any, status: int = 200) -> tuple[Response, int]:
    return jsonify({"status": "success", "data": data}), status


# -- authentication, authorisation, idempotency -------------------------------------------------


def require(*, admin: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Authenticate the token (401), check the group for admin views (403), honour Idempotency-Key."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(**kwargs: Any) -> Any:
            g.user = _authenticate()
            if admin and g.user.group not in ADMIN_GROUPS:
                raise ApiError(403, NO_PERMISSION)
            key = request.headers.get("Idempotency-Key")
            if request.method not in MUTATING or not key:
                return view(**kwargs)
            if len(key) >= MAX_IDEMPOTENCY_KEY:
                raise ApiError(400, f"Idempotency-Key must be shorter than {MAX_IDEMPOTENCY_KEY} characters.")
            scope = (g.user.company, key, request.method, request.full_path)
            return platform_of().idempotency.run_once(scope, lambda: _respond(view, kwargs))

        return wrapper

    return decorate


def _authenticate() -> User:
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    user = _store().user_for_token(token) if scheme.lower() == "token" and token else None
    if user is None:
        raise ApiError(401, INVALID_TOKEN, headers={"WWW-Authenticate": "Token"})
    g.token = token
    return user


def _respond(view: Callable[..., Any], kwargs: dict) -> Response:
    try:
        return current_app.make_response(view(**kwargs))
    except ApiError as error:
        return error_response(error)


@bp.after_request
def _record_auth_call(response: Response) -> Response:
    """Remember every `/3/auth/...` call, with its X-Forwarded-For, for the control API."""
    if request.path.startswith("/3/auth"):
        user = g.get("user")
        platform_of().record_auth_call(
            {
                "at": now_ms(),
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "user": user.identifier if user else None,
                "user_id": user.id if user else None,
                "company": user.company if user else None,
                "forwarded_for": request.headers.get("X-Forwarded-For"),
                "remote_addr": request.remote_addr,
            }
        )
    return response


# -- request bodies -----------------------------------------------------------------------------


def _body() -> dict:
    if not request.get_data():
        return {}
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "JSON parse error: expected a JSON object.")
    return body


def _require_fields(body: dict, *names: str) -> None:
    missing = [name for name in names if body.get(name) in (None, "")]
    if missing:
        raise ApiError(400, REQUIRED, data={name: [REQUIRED] for name in missing})


def _text(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise field_error(name, "Not a valid string.")
    return value


def _amount(body: dict) -> int:
    value = body.get("amount")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise field_error("amount", "A valid positive integer is required.")
    return value


def _status(body: dict, default: str) -> str:
    value = body.get("status") or default
    for status in STATUSES:
        if isinstance(value, str) and value.lower() == status.lower():
            return status
    raise field_error("status", f'"{value}" is not a valid choice.')


def _metadata(body: dict, name: str) -> dict | None:
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise field_error(name, "Must be a JSON object.")
    return value


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if not isinstance(value, bool):
        raise field_error(name, "Must be a valid boolean.")
    return value


def _leg(body: dict, prefix: str = "") -> Leg:
    """Read subtype/note/metadata/reference, preferring `<prefix>name` over `name`."""

    def pick(name: str) -> str:
        return prefix + name if prefix + name in body else name

    return Leg(
        subtype=_text(body, pick("subtype")),
        note=_text(body, pick("note")) or "",
        metadata=_metadata(body, pick("metadata")),
        reference=_text(body, pick("reference")),
    )


def _transaction_id(body: dict) -> str | None:
    value = _text(body, "id")
    if value is None:
        return None
    try:
        return str(uuid.UUID(value, version=4))
    except ValueError:
        raise field_error("id", "Must be a valid UUID.") from None


# -- auth -----------------------------------------------------------------------------------------


@bp.post("/auth/login/")
def login() -> Any:
    """Log in with `{user, company, password}`; `user` may be an email, username or id."""
    body = _body()
    _require_fields(body, "user", "company", "password")
    duration = body.get("session_duration")
    if duration is not None and (
        not isinstance(duration, int) or isinstance(duration, bool) or duration <= 0
    ):
        raise field_error("session_duration", "A valid positive integer (seconds) is required.")
    store = _store()
    token, record = store.login(
        _text(body, "company"), _text(body, "user"), _text(body, "password"), duration
    )
    g.user = store.users[record.user_id]
    return _ok(
        {
            "token": token,
            "refresh_token": None,
            "user": {"id": record.user_id},
            "challenges": [],
            "expires": record.expires,
            "created": record.created,
        }
    )


@bp.get("/auth/")
@require()
def whoami() -> Any:
    """Return the user behind the token."""
    return _ok(shapes.auth_user(_store(), g.user))


@bp.post("/auth/logout/")
@require()
def logout() -> Any:
    """Revoke the token used for this call."""
    _store().revoke(g.token)
    return jsonify({"status": "success"})


# -- transactions -----------------------------------------------------------------------------------


@bp.get("/transactions/")
@require()
def own_transactions() -> Any:
    """List the caller's own transactions (user shape), with the admin filters minus `user`."""
    store, user = _store(), g.user
    with store.lock:
        own = [tx for tx in store.transactions_of(user.company) if tx.user_id == user.id]
        kept = filter_transactions(store, user.company, own, request.args, by_user=False)
        return _ok(
            paginate(kept, request.args, request.base_url, lambda tx: shapes.user_transaction(store, tx))
        )


@bp.get("/transactions/<tx_id>/")
@require()
def own_transaction(tx_id: str) -> Any:
    """Return one of the caller's transactions."""
    store = _store()
    tx = store.transaction(g.user.company, tx_id)
    if tx.user_id != g.user.id:
        raise ApiError(404, "Not found.")
    return _ok(shapes.user_transaction(store, tx))


@bp.get("/admin/transactions/")
@require(admin=True)
def transactions() -> Any:
    """List the company's transactions, filtered, ordered and paginated."""
    store, company = _store(), g.user.company
    with store.lock:
        kept = filter_transactions(store, company, store.transactions_of(company), request.args)
        return _ok(
            paginate(kept, request.args, request.base_url, lambda tx: shapes.admin_transaction(store, tx))
        )


@bp.get("/admin/transactions/<tx_id>/")
@require(admin=True)
def transaction(tx_id: str) -> Any:
    """Return one transaction, extended with `creator`."""
    store = _store()
    return _ok(shapes.admin_transaction(store, store.transaction(g.user.company, tx_id), extended=True))


@bp.patch("/admin/transactions/<tx_id>/")
@require(admin=True)
def update_transaction(tx_id: str) -> Any:
    """Change status (Pending -> Complete/Failed), note, metadata or archived."""
    body = _body()
    status = _status(body, "") if "status" in body else None
    edits: dict[str, Any] = {}
    if "note" in body:
        edits["note"] = _text(body, "note") or ""
    if "metadata" in body:
        edits["metadata"] = _metadata(body, "metadata")
    if "archived" in body:
        edits["archived"] = _flag(body, "archived")
    store = _store()
    tx = store.update_transaction(g.user.company, tx_id, status, edits)
    return _ok(shapes.admin_transaction(store, tx, extended=True))


def _movement(body: dict) -> Movement:
    _require_fields(body, "amount", "currency")
    return Movement(
        user=_text(body, "user"),
        amount=_amount(body),
        currency=_text(body, "currency") or "",
        status=_status(body, COMPLETE),
        account=_text(body, "account"),
        leg=_leg(body),
        id=_transaction_id(body),
    )


@bp.post("/admin/transactions/credit/")
@require(admin=True)
def credit() -> Any:
    """Credit a user (default status Complete; Pending and Failed may be asked)."""
    store = _store()
    tx = store.credit(g.user.company, g.user, _movement(_body()))
    return _ok(shapes.admin_transaction(store, tx, extended=True), 201)


@bp.post("/admin/transactions/debit/")
@require(admin=True)
def debit() -> Any:
    """Debit a user; refused when the available balance is short."""
    store = _store()
    tx = store.debit(g.user.company, g.user, _movement(_body()))
    return _ok(shapes.admin_transaction(store, tx, extended=True), 201)


@bp.post("/admin/transactions/transfer/")
@require(admin=True)
def transfer() -> Any:
    """Move money from `user` to `recipient`: a debit and a credit leg, partnered, in one collection."""
    body = _body()
    _require_fields(body, "amount", "currency", "recipient")
    parsed = Transfer(
        user=_text(body, "user"),
        recipient=_text(body, "recipient") or "",
        amount=_amount(body),
        currency=_text(body, "currency") or "",
        status=_status(body, COMPLETE),
        debit_account=_text(body, "debit_account"),
        credit_account=_text(body, "credit_account"),
        debit=_leg(body, "debit_"),
        credit=_leg(body, "credit_"),
    )
    store = _store()
    debit_leg, _ = store.transfer(g.user.company, g.user, parsed)
    return _ok(shapes.admin_transaction(store, debit_leg, extended=True), 201)


# -- accounts -------------------------------------------------------------------------------------


@bp.get("/admin/accounts/")
@require(admin=True)
def accounts() -> Any:
    """List the company's accounts, filtered by `user`, `name`, `primary` or `reference`."""
    store, company = _store(), g.user.company
    with store.lock:
        kept = filter_accounts(store, company, request.args)
        return _ok(
            paginate(kept, request.args, request.base_url, lambda account: shapes.account(store, account))
        )


@bp.post("/admin/accounts/")
@require(admin=True)
def create_account() -> Any:
    """Open an account `{user, name, label?, primary?}` holding every company currency."""
    body = _body()
    _require_fields(body, "user", "name")
    store = _store()
    user = store.find_user(g.user.company, _text(body, "user") or "")
    if user is None:
        raise field_error("user", "Invalid user.")
    primary = _flag(body, "primary") if "primary" in body else False
    account = store.create_account(
        user, _text(body, "name") or "", primary=primary, label=_text(body, "label")
    )
    return _ok(shapes.account(store, account), 201)


@bp.get("/admin/accounts/<reference>/")
@require(admin=True)
def account(reference: str) -> Any:
    """Return one account."""
    store = _store()
    return _ok(shapes.account(store, store.account(g.user.company, reference)))


# -- webhooks -------------------------------------------------------------------------------------


def _webhook_fields(body: dict, *, partial: bool) -> dict[str, Any]:
    if not partial:
        _require_fields(body, "url", "event")
    fields: dict[str, Any] = {}
    if "url" in body:
        url = _text(body, "url") or ""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise field_error("url", "Enter a valid URL.")
        fields["url"] = url
    if "event" in body:
        event = _text(body, "event")
        if event not in EVENTS:
            raise field_error("event", f'"{event}" is not a valid choice.')
        fields["event"] = event
    if "secret" in body:
        fields["secret"] = _text(body, "secret") or ""
    if "condition" in body:
        fields["condition"] = _text(body, "condition")
    for name in ("enabled", "archived"):
        if name in body:
            fields[name] = _flag(body, name)
    return fields


@bp.get("/admin/webhooks/")
@require(admin=True)
def webhooks() -> Any:
    """List the company's webhooks, filtered by `event` or `url`."""
    store = _store()
    kept = [
        webhook
        for webhook in store.webhooks_of(g.user.company)
        if all(
            request.args[name] == getattr(webhook, name) for name in ("event", "url") if name in request.args
        )
    ]
    return _ok(paginate(kept, request.args, request.base_url, shapes.webhook))


@bp.post("/admin/webhooks/")
@require(admin=True)
def create_webhook() -> Any:
    """Subscribe `{url, event, secret?, condition?, enabled?}`; a duplicate url+event is a 400."""
    fields = _webhook_fields(_body(), partial=False)
    webhook = _store().create_webhook(
        g.user.company,
        fields["url"],
        fields["event"],
        fields.get("secret", ""),
        fields.get("condition"),
        fields.get("enabled", True),
        creator=g.user,  # a service's user ties the webhook to that service
    )
    return _ok(shapes.webhook(webhook), 201)


@bp.get("/admin/webhooks/<int:webhook_id>/")
@require(admin=True)
def webhook(webhook_id: int) -> Any:
    """Return one webhook."""
    return _ok(shapes.webhook(_store().webhook(g.user.company, webhook_id)))


@bp.patch("/admin/webhooks/<int:webhook_id>/")
@require(admin=True)
def update_webhook(webhook_id: int) -> Any:
    """Change some fields of a webhook (e.g. `enabled`)."""
    fields = _webhook_fields(_body(), partial=True)
    return _ok(shapes.webhook(_store().update_webhook(g.user.company, webhook_id, fields)))


# -- webhook tasks (the delivery history; a task's id is the id of the envelope it delivered) -------


def _hooks() -> dict[int, Any]:
    return {hook.id: hook for hook in _store().webhooks_of(g.user.company)}


def _task(task_id: str, hooks: dict[int, Any]) -> Task:
    for task in platform_of().courier.tasks():
        if task.id == task_id and task.webhook_id in hooks:
            return task
    raise ApiError(404, "Not found.")


@bp.get("/admin/webhook-tasks/")
@require(admin=True)
def webhook_tasks() -> Any:
    """List deliveries, filtered by webhook (`webhook__url`, ...) and times; items carry no payload."""
    hooks = _hooks()
    kept = filter_webhook_tasks(platform_of().courier.tasks(), hooks, request.args)
    return _ok(
        paginate(
            kept,
            request.args,
            request.base_url,
            lambda task: shapes.webhook_task(task, hooks[task.webhook_id]),
        )
    )


@bp.get("/admin/webhook-tasks/<task_id>/")
@require(admin=True)
def webhook_task(task_id: str) -> Any:
    """Return one delivery's task with its payload (`data`)."""
    hooks = _hooks()
    task = _task(task_id, hooks)
    return _ok(shapes.webhook_task(task, hooks[task.webhook_id], extended=True))


@bp.get("/admin/webhook-tasks/<task_id>/requests/")
@require(admin=True)
def webhook_task_requests(task_id: str) -> Any:
    """List a delivery's attempts (`response_code` filters them)."""
    attempts = _task(task_id, _hooks()).attempts
    if "response_code" in request.args:
        attempts = [a for a in attempts if str(a.response_code) == request.args["response_code"]]
    return _ok(paginate(attempts, request.args, request.base_url, shapes.webhook_request))
