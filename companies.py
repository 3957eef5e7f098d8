"""One place knows the company: which one we serve, and whether the admin token belongs to it.

Single-company mode is a registry with one entry: `REHIVE_COMPANY` (or, unset, the company Rehive
names for the admin token) and the admin client. Each serving process asks Rehive (`GET /3/auth/` with
the admin token) once, in the background as it starts. Until Rehive has answered, custom requests wait
for it (a few seconds at most, then 503) and handlers do not run; if the token belongs to another
company than `REHIVE_COMPANY`, custom endpoints answer 502 and handlers never run, while deliveries are
still stored.
"""

from __future__ import annotations

import logging
import threading
import time

from flask import Flask, current_app

from errors import ApiError, from_rehive
from rehive_client import RehiveClient, RehiveError, admin

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

        Deliveries use this: they are stored for the configured company whatever the check says.
        """
        if self.configured is not None:
            return self.configured
        if self._learned is None:
            self.wait(None)
        assert self._learned is not None
        return self._learned

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


def init_app(app: Flask) -> None:
    """Give the app its company (after `admin.init_app`, whose client it uses)."""
    app.extensions["company"] = CompanyOfAdmin(app.config["SETTINGS"].company, admin.client(app))


def company_of(app: Flask | None = None) -> CompanyOfAdmin:
    """Return the company of `app` (or of the current app)."""
    return (app or current_app).extensions["company"]
