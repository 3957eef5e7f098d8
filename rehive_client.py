"""The only code that talks HTTP to Rehive: one client, typed errors, an app-bound admin client."""

from __future__ import annotations

import http.cookiejar
import logging
import os
import random
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import requests
from flask import Flask, current_app

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
    ) -> None:
        self.api_url = api_url.rstrip("/") + "/"
        self._token = token
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


class AppBoundClient:
    """The module-level `admin`: a RehiveClient built per app by `init_app`, found via current_app."""

    def init_app(self, app: Flask) -> None:
        """Build the admin client from the app's settings."""
        settings = app.config["SETTINGS"]
        app.extensions["rehive_admin"] = RehiveClient(
            settings.rehive_api_url,
            settings.admin_token,
            timeout=(settings.connect_timeout, settings.read_timeout),
        )

    @staticmethod
    def client(app: Flask | None = None) -> RehiveClient:
        """Return the RehiveClient of `app` (or of the current app)."""
        return (app or current_app).extensions["rehive_admin"]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client(), name)

    def __repr__(self) -> str:
        return "<admin RehiveClient bound per app>"


admin = AppBoundClient()
