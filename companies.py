"""One place knows the company: which ones we serve, their Rehive clients, secrets and states.

`registry_of(app)` is the registry. EXTENSION_MODE=multi: `CompanyRegistry`, the companies that
activated us through `/activate/`, read from the store (tokens and secrets are Fernet ciphertexts,
decrypted here and nowhere else). EXTENSION_MODE=single: `SingleCompany`, a registry with one entry,
described below.

Single-company mode is a registry with one entry: `REHIVE_COMPANY` (or, unset, the company Rehive
names for the admin token) and the admin client. Each serving process asks Rehive (`GET /3/auth/` with
the admin token) once, in the background as it starts. Until Rehive has answered, custom requests wait
for it (a few seconds at most, then 503) and handlers do not run; if the token belongs to another
company than `REHIVE_COMPANY`, custom endpoints answer 502 and handlers never run, while deliveries are
still stored.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import Flask, current_app

from errors import ApiError, from_rehive
from rehive_client import RehiveClient, RehiveError, admin
from store import TOKEN_OK, Store

log = logging.getLogger("service")

PENDING = "pending"  # Rehive has not said yet
CONFIRMED = "confirmed"  # the admin token's company is the one we serve
MISMATCH = "mismatch"  # the admin token belongs to another company than REHIVE_COMPANY

WAIT_SECONDS = 3.0  # how long a custom request waits for the answer (Rehive cuts webhooks at 5 s)
RETRY_AFTER_SECONDS = "5"
MISCONFIGURED = "The service is misconfigured."


class _Attempt:
    """One question to Rehive, asked in a thread; `done` is set once it is answered or failed."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: RehiveError | ApiError | None = None
        self.finished_at = 0.0


class CompanyOfAdmin:
    """The company this service serves, checked against the admin token's company once per process."""

    def __init__(
        self, configured: str | None, client: RehiveClient, wait_seconds: float = WAIT_SECONDS
    ) -> None:
        self.configured = configured
        self.wait_seconds = wait_seconds
        self._client = client
        self._learned: str | None = None  # the admin token's company, once Rehive has said
        self._attempt: _Attempt | None = None
        self._lock = threading.Lock()

    @property
    def of_admin_token(self) -> str | None:
        """Return the company Rehive named for the admin token, or None while unknown."""
        return self._learned

    @property
    def state(self) -> str:
        """Return PENDING, CONFIRMED or MISMATCH."""
        if self._learned is None:
            return PENDING
        if self.configured is None or self._learned == self.configured:
            return CONFIRMED
        return MISMATCH

    def get(self) -> str:
        """Return the company we serve: REHIVE_COMPANY, or else the admin token's, asking Rehive if needed.

        Deliveries use `for_deliveries` instead, which never waits on Rehive.
        """
        if self.configured is not None:
            return self.configured
        if self._learned is None:
            self.wait(None)
        assert self._learned is not None
        return self._learned

    def for_deliveries(self) -> str:
        """Return the company deliveries are for without waiting on Rehive inside the request.

        REHIVE_COMPANY, or the admin token's company once learned; until then the learning goes on in
        the background and the delivery is answered 503 (Rehive delivers it again, with the same id).
        """
        known = self.configured or self._learned
        if known is None:
            self.start(not_within=float(RETRY_AFTER_SECONDS))
            raise ApiError(
                503, "The service is starting; retry shortly.", {"Retry-After": RETRY_AFTER_SECONDS}
            )
        return known

    def start(self, not_within: float = 0.0) -> _Attempt:
        """Ask Rehive in the background, unless it is being asked, or failed less than `not_within` s ago."""
        with self._lock:
            attempt = self._attempt
            busy = attempt is not None and not attempt.done.is_set()
            answered = attempt is not None and attempt.done.is_set() and attempt.error is None
            recent = attempt is not None and time.monotonic() - attempt.finished_at < not_within
            if attempt is None or not (busy or answered or recent):
                attempt = self._attempt = _Attempt()
                threading.Thread(target=self._ask, args=(attempt,), name="company-check", daemon=True).start()
            return attempt

    def wait(self, timeout: float | None, not_within: float = 0.0) -> str:
        """Wait up to `timeout` s for Rehive's answer and return the state; raise what a failed ask met."""
        if self._learned is not None:
            return self.state
        attempt = self.start(not_within)
        if not attempt.done.wait(timeout):
            return PENDING
        if attempt.error is not None:
            raise attempt.error
        return self.state

    def require_checked(self) -> None:
        """Let a custom request go on only once the admin token is known to be of our company."""
        try:
            state = self.wait(self.wait_seconds)
        except RehiveError as exc:  # an outage, a timeout, a refused admin token: as for any call
            raise from_rehive(exc) from exc
        if state == PENDING:
            raise ApiError(
                503, "The service is starting; retry shortly.", {"Retry-After": RETRY_AFTER_SECONDS}
            )
        if state == MISMATCH:
            raise ApiError(502, MISCONFIGURED)

    def _ask_rehive(self) -> str:
        """Return the company Rehive names for the admin token (`GET /3/auth/`)."""
        company = self._client.me().get("company")
        if not isinstance(company, str) or not company:
            raise ApiError(502, "Rehive did not say which company the service is in.")
        return company

    def _ask(self, attempt: _Attempt) -> None:
        try:
            learned = self._ask_rehive()
        except (RehiveError, ApiError) as exc:
            # Whoever waits gets the error; the next request or worker round asks again.
            log.warning("could not check the admin token's company with Rehive yet: %s", type(exc).__name__)
            attempt.error = exc
        else:
            self._learned = learned
            if self.state == MISMATCH:
                log.error(
                    "REHIVE_COMPANY is %r but the admin token belongs to company %r: custom endpoints "
                    "answer 502 and webhook handlers do not run until the configuration is fixed",
                    self.configured,
                    learned,
                )
        finally:
            attempt.finished_at = time.monotonic()
            attempt.done.set()


NOT_ACTIVATED = "This company has not activated the extension."
PLAIN_CACHE_SIZE = 10_000  # decrypted tokens and secrets this process keeps (by ciphertext)


@dataclass(frozen=True)
class Registration:
    """A company's registration as the rest of the code may see it: no token, no secret."""

    company: str
    active: bool
    token_status: str
    token_user: str | None
    activated_at: float | None
    deactivated_at: float | None
    webhook_events: tuple[str, ...]
    updated_at: float

    def public(self) -> dict[str, Any]:
        """Return the fields the CLI and the manage page may show."""
        return {
            "company": self.company,
            "active": self.active,
            "token_status": self.token_status,
            "activated_at": self.activated_at,
            "deactivated_at": self.deactivated_at,
            "webhook_events": list(self.webhook_events),
        }


def _registration(row: dict[str, Any]) -> Registration:
    try:
        events = tuple(json.loads(row["webhook_events"] or "[]"))
    except ValueError:
        events = ()
    return Registration(
        company=row["company"],
        active=row["active"],
        token_status=row["token_status"],
        token_user=row["token_user"],
        activated_at=row["activated_at"],
        deactivated_at=row["deactivated_at"],
        webhook_events=events,
        updated_at=row["updated_at"],
    )


def new_webhook_secret() -> str:
    """Return a fresh webhook secret: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


class SingleCompany:
    """EXTENSION_MODE=single: a registry with one entry, the company of REHIVE_ADMIN_TOKEN."""

    multi = False

    def __init__(self, app: Flask) -> None:
        self.app = app

    def claim_scope(self) -> dict[str, Any]:
        """Return which events the workers may claim: the configured company's only."""
        return {"company": company_of(self.app).get()}

    def client(self, company: str) -> RehiveClient:
        """Return the admin client if `company` is ours."""
        if company != company_of(self.app).get():
            raise ApiError(403, NOT_ACTIVATED)
        return admin.base(self.app)


class CompanyRegistry:
    """EXTENSION_MODE=multi: every company that activated us, read from the store; decryptions cached."""

    multi = True

    def __init__(self, app: Flask, store: Store) -> None:
        settings = app.config["SETTINGS"]
        self.settings = settings
        self.store = store
        self._fernet = MultiFernet([Fernet(key) for key in settings.token_encryption_keys])
        self._lock = threading.Lock()
        self._plain_cache: dict[str, str] = {}  # ciphertext -> plaintext, never written anywhere
        # One client per (company, token ciphertext): a replaced token gets a new client.
        self._clients: dict[tuple[str, str], RehiveClient] = {}

    # -- the one place tokens and secrets are encrypted and decrypted ---------------------------

    def encrypt(self, plaintext: str) -> str:
        """Return the Fernet ciphertext of `plaintext`, made with the first key."""
        return self._fernet.encrypt(plaintext.encode()).decode()

    def _decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            # A key removed from TOKEN_ENCRYPTION_KEYS too early; never name the value.
            log.error("a stored token or secret cannot be decrypted with any of TOKEN_ENCRYPTION_KEYS")
            raise ApiError(502, MISCONFIGURED) from None

    # -- reading ---------------------------------------------------------------------------------

    def _row(self, company: str) -> dict[str, Any] | None:
        # Read every time (one primary-key lookup): another process may have rotated, deactivated or
        # purged the company a moment ago, and a cached row would use a revoked token or a stale
        # secret. What is cached is the decryption, keyed by ciphertext, so a change is never missed.
        return self.store.registration(company)

    def _plain(self, ciphertext: str) -> str:
        """Return the plaintext of `ciphertext`, decrypting it only the first time this process sees it."""
        with self._lock:
            plain = self._plain_cache.get(ciphertext)
        if plain is None:
            plain = self._decrypt(ciphertext)
            with self._lock:
                self._plain_cache[ciphertext] = plain
                if len(self._plain_cache) > PLAIN_CACHE_SIZE:
                    self._plain_cache.pop(next(iter(self._plain_cache)))
        return plain

    def invalidate(self, company: str) -> None:
        """Forget the clients this process made for the company (after it changed)."""
        with self._lock:
            for key in [key for key in self._clients if key[0] == company]:
                del self._clients[key]

    def get(self, company: str) -> Registration | None:
        """Return the company's registration, or None if it never activated (or was purged)."""
        row = self._row(company)
        return None if row is None else _registration(row)

    def all(self) -> list[Registration]:
        """Return every registration, by company."""
        return [_registration(row) for row in self.store.registrations()]

    def claim_scope(self) -> dict[str, Any]:
        """Return which events the workers may claim: those of active companies with a working token."""
        return {"registered": True}

    def require_serving(self, company: str | None) -> None:
        """Let a custom request of `company` go on only if it is active with a working token."""
        row = self._row(company) if isinstance(company, str) and company else None
        if row is None or not row["active"]:
            raise ApiError(403, NOT_ACTIVATED)
        if row["token_status"] != TOKEN_OK:
            raise ApiError(502, MISCONFIGURED)

    def client(self, company: str) -> RehiveClient:
        """Return the company's admin client (its token decrypted here, once per token)."""
        row = self._row(company)
        if row is None or not row["active"] or not row["token"]:
            raise ApiError(403, NOT_ACTIVATED)
        key = (company, row["token"])
        with self._lock:
            client = self._clients.get(key)
        if client is None:
            client = RehiveClient(
                self.settings.rehive_api_url,
                self._plain(row["token"]),
                timeout=(self.settings.connect_timeout, self.settings.read_timeout),
                on_token_refused=lambda: self.token_refused(company, key[1]),
            )
            with self._lock:
                # One client per company: a token rotated away (here or by another process) is dropped.
                for stale in [k for k in self._clients if k[0] == company and k != key]:
                    del self._clients[stale]
                self._clients[key] = client
        return client

    def secrets_for(self, company: str, now: float | None = None) -> tuple[str, ...]:
        """Return the secrets a delivery for an active `company` may carry (none if it is not active)."""
        row = self._row(company)
        if row is None or not row["active"]:
            return ()
        now = time.time() if now is None else now
        found = [self._plain(row["secret"])]
        until = row["previous_secret_until"]
        if row["previous_secret"] and until is not None and now < until:
            found.append(self._plain(row["previous_secret"]))
        return tuple(found)

    def secret_for_activation(self, company: str) -> str:
        """Return the company's secret, kept across re-activations, or a new one."""
        row = self.store.registration(company)
        return self._decrypt(row["secret"]) if row is not None else new_webhook_secret()

    # -- changing --------------------------------------------------------------------------------

    def activate(self, company: str, token: str, token_user: str, secret: str, events: list[str]) -> bool:
        """Store the company active with this token (and secret, if it had none); True if new."""
        created = self.store.activate_company(
            company, self.encrypt(token), token_user, self.encrypt(secret), events
        )
        self.invalidate(company)
        return created

    def deactivate(self, company: str) -> bool:
        """Make the company inactive and delete its token; False if it never activated."""
        changed = self.store.deactivate_company(company)
        self.invalidate(company)
        return changed

    def replace_token(self, company: str, token: str, token_user: str) -> bool:
        """Replace an active company's token, clearing token_invalid; False if it is not active."""
        changed = self.store.replace_token(company, self.encrypt(token), token_user)
        self.invalidate(company)
        return changed

    def purge(self, company: str) -> dict[str, int]:
        """Delete every row of the company: registration, settings, events."""
        deleted = self.store.purge_company(company)
        self.invalidate(company)
        return deleted

    def token_refused(self, company: str, ciphertext: str) -> None:
        """Mark the company token_invalid: Rehive answered 401 to a call made with its token."""
        if self.store.mark_token_invalid(company, ciphertext):
            log.error(
                "Rehive refused the token of company %s (401): it is marked token_invalid; its custom"
                " requests answer 502 and its events wait until /rotate/ or a new activation",
                company,
            )
        self.invalidate(company)

    def rotate_secret(self, company: str, new_secret: str) -> bool:
        """Make `new_secret` the company's secret; the current one stays accepted for the grace period."""
        row = self.store.registration(company)
        if row is None:
            return False
        until = time.time() + self.settings.webhook_secret_grace_seconds
        changed = self.store.set_secret(company, self.encrypt(new_secret), row["secret"], until)
        self.invalidate(company)
        return changed

    def rotate_keys(self) -> int:
        """Re-encrypt every token and secret with the first key; return how many rows changed."""
        changed = 0
        for row in self.store.registrations():
            old = {name: row[name] for name in ("token", "secret", "previous_secret")}
            new = {
                name: (self._fernet.rotate(value.encode()).decode() if value else value)
                for name, value in old.items()
            }
            if self.store.rewrite_ciphertexts(row["company"], old, new):
                changed += 1
            self.invalidate(row["company"])
        return changed


class _AllCompanies:
    """What `company_of` answers in multi mode: there is no one company to check at start."""

    state = CONFIRMED

    def start(self, not_within: float = 0.0) -> None:
        """Nothing to ask: each company's token was checked when it activated."""

    def wait(self, timeout: float | None, not_within: float = 0.0) -> str:
        """Return CONFIRMED: workers may run (the claim itself picks the companies)."""
        return CONFIRMED

    def require_checked(self) -> None:
        """Nothing to wait for; the caller's company is checked by `authenticate`."""

    def get(self) -> str:
        """There is no one company in multi mode."""
        raise RuntimeError("EXTENSION_MODE=multi serves many companies: ask registry_of(app)")


def init_app(app: Flask) -> None:
    """Give the app its company registry (after `admin.init_app`, and after the store is opened)."""
    settings = app.config["SETTINGS"]
    if settings.multi:
        registry = CompanyRegistry(app, app.extensions["store"])
        app.extensions["companies"] = registry
        app.extensions["company"] = _AllCompanies()
        app.extensions["company_client"] = registry.client
    else:
        app.extensions["company"] = CompanyOfAdmin(settings.company, admin.base(app))
        app.extensions["companies"] = SingleCompany(app)


def company_of(app: Flask | None = None) -> CompanyOfAdmin:
    """Return the company of `app` (or of the current app): single mode's one company."""
    return (app or current_app).extensions["company"]


def registry_of(app: Flask | None = None) -> CompanyRegistry | SingleCompany:
    """Return the company registry of `app` (or of the current app)."""
    return (app or current_app).extensions["companies"]
