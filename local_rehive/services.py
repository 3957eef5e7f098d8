"""Services (extensions) the way Rehive runs them: register, activate, deactivate, rotate, purge.

Activation creates a `service`-group user with a fresh token and POSTs `{"token"}` to `<url>/activate/`;
only a 200 or 201 within 10 s installs it (rehive-api.md §6.2, next.md §1.1). The calls to the
extension are made without holding the store's lock, because the extension calls back (`/3/auth/`,
`/3/admin/company/`, `/3/admin/webhooks/`) while it answers.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

from local_rehive import control, shapes
from local_rehive.api import REQUIRED, _body, _ok, require
from local_rehive.courier import LOG_SIZE
from local_rehive.errors import ApiError, field_error
from local_rehive.listing import paginate
from local_rehive.model import Service, User, now_ms
from local_rehive.state import platform_of
from local_rehive.store import Store

log = logging.getLogger("local_rehive.services")

bp = Blueprint("services", __name__, url_prefix="/3")

CALL_TIMEOUT = 10.0  # Rehive gives /activate/ and /deactivate/ 10 s; /rotate/'s limit is undocumented
SUCCESS = frozenset({200, 201})  # the only answers Rehive counts as success from an extension
MAX_BODY = 64 * 1024  # of an extension's answer, read for its `message`
MAX_MESSAGE = 500
MAX_NAME = 100
MAX_URL = 500
MAX_TAGS = 20
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


# -- calls to the extension -----------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What the extension answered to one call: an HTTP status, or a connection error."""

    url: str
    status: int | None
    message: str | None = None  # the `message` string of its JSON answer, if any
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Return whether Rehive would count this answer as success."""
        return self.status in SUCCESS

    def failure(self) -> str:
        """Return the text Rehive shows an admin when the call fails (DP-CL 2023-05-04, 2023-09-22)."""
        if self.status is None:
            return f"An error occurred in the service: Unable to connect to {self.url}."
        if self.message:
            return f"An error occurred in the service: {self.message}"
        return f"An error occurred in the service: Received a {self.status} response from {self.url}."


class Installer:
    """Calls extensions and remembers each call; one change at a time per service."""

    def __init__(self, timeout: float = CALL_TIMEOUT) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._service_locks: dict[int, threading.Lock] = {}
        self._log: deque[dict] = deque(maxlen=LOG_SIZE)

    @contextmanager
    def changing(self, service_id: int) -> Iterator[None]:
        """Serialise changes to one service (two admins pressing "Activate" together make one user)."""
        with self._lock:
            lock = self._service_locks.setdefault(service_id, threading.Lock())
        with lock:
            yield

    def call(self, service: Service, url: str, endpoint: str, body: dict) -> Outcome:
        """POST `body` to `<url>/<endpoint>/` and record the outcome (never the body: it holds a token)."""
        target = f"{url.rstrip('/')}/{endpoint}/"
        outcome = _post(target, body, self.timeout)
        row = {
            "service": service.id,
            "company": service.company,
            "endpoint": endpoint,
            "url": target,
            "purge": body.get("purge"),
            "status": outcome.status,
            "message": outcome.message,
            "error": outcome.error,
            "ok": outcome.ok,
            "at": now_ms(),
        }
        with self._lock:
            self._log.append(row)
        if not outcome.ok:
            log.warning("service %s /%s/ failed: %s", service.id, endpoint, outcome.error or outcome.status)
        return outcome

    def calls(self) -> list[dict]:
        """Return every call made to an extension, oldest first."""
        with self._lock:
            return list(self._log)


def _post(url: str, body: dict, timeout: float) -> Outcome:
    try:
        with requests.Session() as session:
            session.trust_env = False  # call the extension directly, as the platform does
            with session.post(url, json=body, timeout=timeout, allow_redirects=False, stream=True) as answer:
                raw = answer.raw.read(MAX_BODY, decode_content=True)
                return Outcome(url, answer.status_code, _message(raw))
    except requests.RequestException as exc:
        return Outcome(url, None, error=type(exc).__name__)


def _message(raw: bytes) -> str | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    message = body.get("message") if isinstance(body, dict) else None
    return message[:MAX_MESSAGE] if isinstance(message, str) and message.strip() else None


def installer_of(app: Flask | None = None) -> Installer:
    """Return the Installer of `app` (or of the current app)."""
    return (app or current_app).extensions["local_rehive_services"]


def init_app(app: Flask, timeout: float = CALL_TIMEOUT) -> None:
    """Give `app` the services API (its `/_control/services/...` calls are on the control blueprint)."""
    app.extensions["local_rehive_services"] = Installer(timeout)
    app.register_blueprint(bp)


# -- the lifecycle --------------------------------------------------------------------------------


def activate(store: Store, installer: Installer, service: Service, url: str) -> Outcome:
    """Create a service user and token and offer them to `<url>/activate/`; undo both unless accepted."""
    user = store.add_user(service.company, "service", first_name=service.name, last_name="Service")
    token, _ = store.issue_token(user, None)
    with store.lock:
        previous_user = service.user_id
        service.user_id = user.id  # webhooks the extension creates while activating are tied to it
    outcome = installer.call(service, url, "activate", {"token": token})
    with store.lock:
        if outcome.ok:
            service.active, service.token = True, token
        else:  # as Rehive does: the user and token it created are disabled
            user.active = False
            store.revoke(token)
            service.user_id = previous_user
    return outcome


def deactivate(store: Store, installer: Installer, service: Service, *, purge: bool) -> Outcome:
    """POST the service user's token to `<url>/deactivate/`, then deactivate that user, whatever it said."""
    token = service.token or ""
    outcome = installer.call(service, service.url, "deactivate", {"token": token, "purge": purge})
    # An admin can always uninstall an extension, even one that is down or refuses (a guess: Rehive's
    # behaviour on a failed /deactivate/ is undocumented); the call log shows what it answered.
    with store.lock:
        user = store.users.get(service.user_id or "")
        if user is not None:
            user.active = False
        store.revoke(token)
        service.active, service.token = False, None
    return outcome


def rotate(store: Store, installer: Installer, service: Service) -> Outcome:
    """Issue a new token to the service user and POST it to `<url>/rotate/`; keep whichever it holds."""
    user = store.users[service.user_id or ""]
    token, _ = store.issue_token(user, None)
    outcome = installer.call(service, service.url, "rotate", {"token": token})
    with store.lock:
        if outcome.ok:
            store.revoke(service.token or "")
            service.token = token
        else:
            store.revoke(token)
    return outcome


# -- request bodies -------------------------------------------------------------------------------


def _string(body: dict, name: str, *, limit: int, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise ApiError(400, REQUIRED, data={name: [REQUIRED]})
        return None
    if not isinstance(value, str):
        raise field_error(name, "Not a valid string.")
    if not value.strip():
        raise field_error(name, "This field may not be blank.")
    if len(value) > limit:
        raise field_error(name, f"Ensure this field has no more than {limit} characters.")
    return value


def _url(body: dict, name: str, *, required: bool) -> str | None:
    value = _string(body, name, limit=MAX_URL, required=required)
    if value is None:
        return None
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(char.isspace() or ord(char) < 32 for char in value)
    ):
        raise field_error(name, "Enter a valid URL.")
    return value


def _tags(body: dict) -> list[str]:
    value = body.get("tags")
    if value is None:
        return []
    if (
        not isinstance(value, list)
        or len(value) > MAX_TAGS
        or not all(isinstance(tag, str) and 0 < len(tag) <= MAX_NAME for tag in value)
    ):
        raise field_error("tags", f"Expected a list of at most {MAX_TAGS} non-empty strings.")
    return list(value)


def service_fields(body: dict, *, partial: bool) -> dict[str, Any]:
    """Parse `{name, url, description?, tags?, management_url?}` (any subset when `partial`)."""
    fields: dict[str, Any] = {}
    if not partial or "name" in body:
        fields["name"] = _string(body, "name", limit=MAX_NAME, required=True)
    if not partial or "url" in body:
        fields["url"] = _url(body, "url", required=True)
    if not partial or "description" in body:
        fields["description"] = _string(body, "description", limit=MAX_URL)
    if not partial or "tags" in body:
        fields["tags"] = _tags(body)
    if not partial or "management_url" in body:
        fields["management_url"] = _url(body, "management_url", required=False)
    return fields


def _active(body: dict) -> bool | None:
    if "active" not in body:
        return None
    value = body["active"]
    if not isinstance(value, bool):
        raise field_error("active", "Must be a valid boolean.")
    return value


# -- /3/admin/company/ and /3/admin/services/ -----------------------------------------------------


def _store() -> Store:
    return platform_of().store


def _owner(store: Store, company: str) -> User | None:
    return next((user for user in store.users_of(company) if user.owner), None)


@bp.get("/admin/company/")
@require(admin=True)
def company() -> Any:
    """Return the caller's company: `id` is its identifier; `services` are its active services."""
    store, identifier = _store(), g.user.company
    owner = _owner(store, identifier)
    return _ok(
        {
            "id": identifier,
            "name": identifier.title(),
            "description": None,
            "website": None,
            "logo": None,
            "icon": None,
            "public": False,
            "mode": "test",
            "status": "active",
            "services": [shapes.reduced_service(s) for s in store.services_of(identifier) if s.active],
            "owner": shapes.member(owner) if owner else None,
        }
    )


@bp.get("/admin/services/")
@require(admin=True)
def list_services() -> Any:
    """List the company's services, filtered by `active`, `slug` or `type`."""
    kept = _store().services_of(g.user.company)
    if "active" in request.args:
        wanted = _BOOLEANS.get(request.args["active"].lower())
        if wanted is None:
            raise field_error("active", "Must be a valid boolean.")
        kept = [service for service in kept if service.active is wanted]
    if "slug" in request.args:
        kept = [service for service in kept if service.slug == request.args["slug"]]
    if "type" in request.args:
        kept = [service for service in kept if request.args["type"] == "private"]
    return _ok(paginate(kept, request.args, request.base_url, shapes.service))


@bp.post("/admin/services/")
@require(admin=True)
def create_service() -> Any:
    """Register a private service `{name, url, description?, tags?, management_url?}`, inactive."""
    service = _store().add_service(g.user.company, service_fields(_body(), partial=False))
    return _ok(shapes.service(service), 201)


@bp.get("/admin/services/<int:service_id>/")
@require(admin=True)
def get_service(service_id: int) -> Any:
    """Return one service."""
    return _ok(shapes.service(_store().service(g.user.company, service_id)))


@bp.patch("/admin/services/<int:service_id>/")
@require(admin=True)
def update_service(service_id: int) -> Any:
    """Change fields; `active` true/false activates or deactivates it through the extension."""
    body = _body()
    fields, active = service_fields(body, partial=True), _active(body)
    store, installer = _store(), installer_of()
    store.service(g.user.company, service_id)  # a 404 before taking a lock for that id
    with installer.changing(service_id):
        found = store.service(g.user.company, service_id)  # as it is now that changes wait for us
        if active is True and not found.active:
            outcome = activate(store, installer, found, fields.get("url", found.url))
            if not outcome.ok:
                raise ApiError(400, outcome.failure())
        elif active is False and found.active:
            deactivate(store, installer, found, purge=False)
        with store.lock:
            for name, value in fields.items():
                setattr(found, name, value)
    return _ok(shapes.service(found))


@bp.delete("/admin/services/<int:service_id>/")
@require(admin=True)
def delete_service(service_id: int) -> Any:
    """Delete an inactive service (an active one must be deactivated first: a guess)."""
    store = _store()
    with installer_of().changing(store.service(g.user.company, service_id).id):
        store.delete_service(g.user.company, service_id)
    return jsonify({"status": "success"})


# Here rather than in api.py because only services lock a webhook against deletion.
@bp.delete("/admin/webhooks/<int:webhook_id>/")
@require(admin=True)
def delete_webhook(webhook_id: int) -> Any:
    """Delete a webhook; one created by a service's user is locked while that service is active."""
    _store().delete_webhook(g.user.company, webhook_id)
    return jsonify({"status": "success"})


# -- /_control/services/... (on the control blueprint, so its loopback and JSON checks apply) -------


def _control_answer(service: Service, action: str, outcome: Outcome) -> Response:
    """Return what happened, for a developer: the extension's status and message, never a token."""
    return jsonify(
        {
            "service": service.id,
            "company": service.company,
            "action": action,
            "url": outcome.url,
            "status": outcome.status,
            "ok": outcome.ok,
            "message": None if outcome.ok else outcome.failure(),
            "active": service.active,
        }
    )


def _active_service(service_id: int) -> Service:
    with _store().lock:
        service = _store().services.get(service_id)
    if service is None:
        raise ApiError(404, "No such service.")
    if not service.active:
        raise ApiError(400, "The service is not active.")
    return service


@control.bp.post("/services/<int:service_id>/rotate")
def rotate_token(service_id: int) -> Response:
    """Give the service user a new token via `<url>/rotate/`; the old one dies only if it was accepted."""
    installer = installer_of()
    _active_service(service_id)  # refuse before taking a lock for that id
    with installer.changing(service_id):
        service = _active_service(service_id)
        return _control_answer(service, "rotate", rotate(_store(), installer, service))


@control.bp.post("/services/<int:service_id>/purge")
def purge(service_id: int) -> Response:
    """Remove the company's install as Rehive does when deleting a company: `/deactivate/` with purge."""
    installer = installer_of()
    _active_service(service_id)
    with installer.changing(service_id):
        service = _active_service(service_id)
        return _control_answer(service, "purge", deactivate(_store(), installer, service, purge=True))


@control.bp.get("/services/calls")
def service_calls() -> Response:
    """Return every call made to an extension (activate, deactivate, rotate), oldest first."""
    return jsonify(installer_of().calls())
