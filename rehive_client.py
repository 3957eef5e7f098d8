"""The only code that talks HTTP to Rehive: one client, typed errors, an app-bound admin client."""

from __future__ import annotations

import contextvars
import http.cookiejar
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import requests
from flask import Flask, current_app, g, has_app_context

import metrics
from logs import REQUEST_ID_HEADER, current_request_id

log = logging.getLogger("rehive")

RETRY_STATUSES = frozenset({502, 503, 504})
MAX_RETRY_AFTER = 2.0  # seconds we are willing to wait inside a request before giving up


class RehiveError(Exception):
    """Rehive could not give us what we asked for; subclasses say why."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: Any = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body
        self.retry_after = retry_after


class RehiveUnauthorized(RehiveError):
    """Rehive answered 401: the token is missing, wrong or expired."""


class RehiveForbidden(RehiveError):
    """Rehive answered 403: the token is valid but may not do this."""


class RehiveRateLimited(RehiveError):
    """Rehive answered 429; `retry_after` holds its Retry-After header."""


class RehiveUnavailable(RehiveError):
    """Rehive could not be reached or answered 5xx."""


class RehiveTimeout(RehiveError):
    """Rehive did not answer within our timeout."""


class RehiveBadResponse(RehiveError):
    """Rehive answered with something that is not the JSON we expect."""


class RehiveRequestError(RehiveError):
    """Rehive refused the request itself (400, 404, ...); `status` and `body` say how."""


class UnsafeRehivePath(ValueError):
    """Our own code asked for a path that could leave REHIVE_API_URL; nothing was sent.

    A ValueError, not a RehiveError: Rehive said nothing, a caller of ours passed a bad argument (a bug,
    or unchecked input in a path), and it must not be mapped to an upstream status or retried as one.
    """


# C0 controls, DEL and C1 controls: a header or request-line splitter in a path is never legitimate.
_CONTROL = frozenset(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)))


def _check_path(path: object) -> str:
    """Return `path` if it stays under the API root, else raise UnsafeRehivePath (naming no value)."""
    if not isinstance(path, str):
        raise UnsafeRehivePath("a Rehive path must be a string")
    # Decode until stable, so `%252e%252e` is judged as `..` too (servers and proxies may decode twice).
    decoded, previous = path, None
    for _ in range(4):
        if decoded == previous:
            break
        previous, decoded = decoded, unquote(decoded)
    for text in (path, decoded):
        if any(char in _CONTROL for char in text):
            raise UnsafeRehivePath("a Rehive path may not hold control characters")
        if text.startswith(("//", "\\\\", "/\\", "\\/")):
            raise UnsafeRehivePath("a Rehive path may not start with '//'")
        parts = urlsplit(text)
        if parts.scheme or parts.netloc:
            raise UnsafeRehivePath("a Rehive path may not name a scheme or host")
        if ".." in parts.path.replace("\\", "/").split("/"):
            raise UnsafeRehivePath("a Rehive path may not hold a '..' segment")
    return path


def _message(body: Any, default: str) -> str:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return default


class RehiveClient:
    """A client for one Rehive API root, authenticated as one token per call."""

    def __init__(
        self,
        api_url: str,
        token: str | None = None,
        *,
        timeout: tuple[float, float] = (3.0, 10.0),
        get_retries: int = 2,
        backoff: float = 0.1,
        on_token_refused: Callable[[], None] | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/") + "/"
        self._token = token
        # Called when Rehive answers 401 to a call made with our own token (multi-company mode marks
        # the company token_invalid there, so every such call is seen, in requests and handlers alike).
        self.on_token_refused = on_token_refused
        self.timeout = timeout
        self.get_retries = get_retries
        self.backoff = backoff
        self._local = threading.local()
        # The status (401/403) of the last call made with our own token if Rehive refused it, else
        # None; /readyz reads it, so that a probe never costs a Rehive call.
        self.admin_token_refused: int | None = None

    def __repr__(self) -> str:  # never show the token
        return f"<RehiveClient {self.api_url}>"

    @property
    def session(self) -> requests.Session:
        """Return this thread's Session: requests.Session is not documented as thread-safe."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # Proxies and CA bundle are resolved once here, not on every call: with trust_env
            # requests re-reads the environment and ~/.netrc per request.
            session.proxies = requests.utils.get_environ_proxies(self.api_url)
            session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            session.trust_env = False
            # A Set-Cookie from Rehive must never ride along on a later call for someone else.
            session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=4)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def close(self) -> None:
        """Close this thread's pooled connections."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    # -- calls made with this client's own (admin) token ---------------------------------------

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> dict:
        """GET an API path with this client's token and return the decoded JSON body."""
        return self.request("GET", path, token=self._require_token(), params=params)

    def post(self, path: str, json: Any, *, idempotency_key: str | None = None) -> dict:
        """POST JSON with this client's token; pass `idempotency_key` for anything that moves money."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", path, token=self._require_token(), json=json, headers=headers)

    def patch(self, path: str, json: Any) -> dict:
        """PATCH JSON with this client's token and return the decoded JSON body."""
        return self.request("PATCH", path, token=self._require_token(), json=json)

    def me(self) -> dict:
        """Return the Rehive user behind this client's own token."""
        return self.whoami(self._require_token())

    def _require_token(self) -> str:
        if not self._token:
            raise RehiveUnauthorized("no admin token configured")
        return self._token

    # -- calls made with someone else's token -------------------------------------------------

    def whoami(self, user_token: str, forwarded_for: str | None = None) -> dict:
        """Ask Rehive who `user_token` belongs to (`GET /3/auth/`); return the user object."""
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else None
        body = self.request("GET", "auth/", token=user_token, headers=headers)
        user = body.get("data")
        if not isinstance(user, dict) or not isinstance(user.get("id"), str):
            raise RehiveBadResponse("Rehive's /auth/ answer has no user", body=body)
        return user

    # -- the one place HTTP happens -------------------------------------------------------------

    def url_for(self, path: str) -> str:
        """Return the URL of an API path, refusing (UnsafeRehivePath) any that would leave the API root."""
        url = urljoin(self.api_url, _check_path(path).lstrip("/"))
        # The final guard: whatever the checks above missed, the admin token goes nowhere else.
        if not url.startswith(self.api_url):
            raise UnsafeRehivePath("a Rehive path must stay under REHIVE_API_URL")
        return url

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict:
        """Send one call (retrying safe failures of GETs) and return the decoded JSON body."""
        if not token:
            raise ValueError("a Rehive call needs an explicit token")
        url = self.url_for(path)
        all_headers = {"Authorization": f"Token {token}", "Accept": "application/json"}
        if headers:
            all_headers.update(headers)
        request_id = current_request_id()
        if request_id:
            all_headers[REQUEST_ID_HEADER] = request_id
        own_token = token == self._token
        kind = _kind(method, path, own_token=own_token)
        attempts = 1 + (self.get_retries if method == "GET" else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._send(
                    kind, own_token, method, url, params=params, json=json, headers=all_headers
                )
            except requests.ConnectTimeout as exc:
                if last:
                    raise RehiveTimeout(f"Rehive did not accept a connection: {path}") from exc
            except requests.Timeout as exc:  # read timeout: the call may have had effect
                raise RehiveTimeout(f"Rehive did not answer in time: {path}") from exc
            except requests.ConnectionError as exc:
                if last:
                    raise RehiveUnavailable(f"Rehive is unreachable: {path}") from exc
            else:
                if response.status_code not in RETRY_STATUSES or last:
                    return self._decode(response, path)
                retry_after = _seconds(response.headers.get("Retry-After"))
                if retry_after is not None and retry_after > MAX_RETRY_AFTER:
                    return self._decode(response, path)
                response.close()
                if retry_after is not None:
                    time.sleep(retry_after)
                    continue
            # Exponential backoff with full jitter, so a fleet of threads does not retry in step.
            time.sleep(random.uniform(0, self.backoff * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, kind: str, own_token: bool, method: str, url: str, **kwargs: Any) -> requests.Response:
        """Send one HTTP request, counting it (and its time) by kind and status class."""
        started = time.monotonic()
        status: int | None = None
        failure = "connection_error"
        try:
            response = self.session.request(
                method, url, timeout=self.timeout, allow_redirects=False, **kwargs
            )
        except requests.Timeout:
            failure = "timeout"
            raise
        else:
            status = response.status_code
            if own_token:
                self.admin_token_refused = status if status in (401, 403) else None
                if status == 401 and self.on_token_refused is not None:
                    self.on_token_refused()
            return response
        finally:
            metrics.REHIVE_REQUESTS.labels(kind, metrics.status_class(status, failure)).inc()
            metrics.REHIVE_REQUEST_SECONDS.labels(kind).observe(time.monotonic() - started)

    @staticmethod
    def _decode(response: requests.Response, path: str) -> dict:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if 200 <= status < 300:
            if not isinstance(body, dict):
                raise RehiveBadResponse(f"Rehive answered {status} without a JSON object: {path}")
            return body
        retry_after = response.headers.get("Retry-After")
        if status == 401:
            raise RehiveUnauthorized(_message(body, "Invalid token."), status=status, body=body)
        if status == 403:
            raise RehiveForbidden(_message(body, "Forbidden."), status=status, body=body)
        if status == 429:
            raise RehiveRateLimited(
                _message(body, "Request was throttled."),
                status=status,
                body=body,
                retry_after=retry_after,
            )
        if status >= 500:
            raise RehiveUnavailable(
                f"Rehive answered {status}: {path}", status=status, body=body, retry_after=retry_after
            )
        if 400 <= status < 500:
            raise RehiveRequestError(
                _message(body, f"Rehive refused the request ({status})."), status=status, body=body
            )
        raise RehiveBadResponse(f"Rehive answered {status}: {path}", status=status)


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _kind(method: str, path: str, *, own_token: bool) -> str:
    """Return the metrics kind of a call: auth (whose token is this?), admin_read or admin_write."""
    if path.lstrip("/").startswith("auth/") or not own_token:
        return "auth"
    return "admin_read" if method in ("GET", "HEAD", "OPTIONS") else "admin_write"


class NoCompanyContext(RuntimeError):
    """Multi-company mode: `admin` was used outside a request or an event of a company."""


# The company whose event a worker is running (multi-company mode). Requests keep theirs in flask.g
# instead: g ends with the request, while a thread's contextvar would outlive it into its next request.
_event_company: contextvars.ContextVar[str | None] = contextvars.ContextVar("event_company", default=None)


@contextmanager
def event_company(company: str) -> Iterator[None]:
    """Make `admin` the client of `company` while the worker runs one of its events."""
    token = _event_company.set(company)
    try:
        yield
    finally:
        _event_company.reset(token)


def current_company() -> str | None:
    """Return the company of the event being run, or of the current request once authenticated."""
    company = _event_company.get()
    if company is None and has_app_context():
        company = g.get("company")
    return company


class AppBoundClient:
    """The module-level `admin`: the admin client of the app, or (multi mode) of the current company.

    Single-company mode: one RehiveClient built by `init_app` with REHIVE_ADMIN_TOKEN. Multi-company
    mode: the current request's or event's company's client, handed out by the companies registry
    (`app.extensions["company_client"]`); the app's own client then holds no token (it only asks
    Rehive whose a token is).
    """

    def init_app(self, app: Flask) -> None:
        """Build the app's own client from the app's settings."""
        settings = app.config["SETTINGS"]
        app.extensions["rehive_admin"] = RehiveClient(
            settings.rehive_api_url,
            settings.admin_token or None,
            timeout=(settings.connect_timeout, settings.read_timeout),
        )

    @staticmethod
    def base(app: Flask | None = None) -> RehiveClient:
        """Return the app's own client (single mode: the admin token's; multi mode: no token)."""
        return (app or current_app).extensions["rehive_admin"]

    @staticmethod
    def client(app: Flask | None = None) -> RehiveClient:
        """Return the admin RehiveClient of `app` (or of the current app) for the current company."""
        app = app or current_app
        for_company: Callable[[str], RehiveClient] | None = app.extensions.get("company_client")
        if for_company is None:
            return app.extensions["rehive_admin"]
        company = current_company()
        if company is None:
            raise NoCompanyContext(
                "rehive_client.admin was used outside a request or a webhook event of a company: in"
                " EXTENSION_MODE=multi it is that company's client; elsewhere, ask"
                " companies.registry_of(app).client(company)"
            )
        return for_company(company)

    def whoami(self, user_token: str, forwarded_for: str | None = None) -> dict:
        """Ask Rehive who `user_token` belongs to (no admin token involved, so no company needed)."""
        return self.base().whoami(user_token, forwarded_for=forwarded_for)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client(), name)

    def __repr__(self) -> str:
        return "<admin RehiveClient bound per app>"


admin = AppBoundClient()
