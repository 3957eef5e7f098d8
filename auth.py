"""Decorators that learn who the caller is from Rehive and decide whether they may go on.

The pipeline is parse -> authenticate -> authorise, each step small:
`Authorization: Token <t>` is parsed here, Rehive's `GET /3/auth/` says whose token it is, and we
check that the user belongs to our company (and, where asked, to a group) before the view runs.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import cachetools
from flask import Flask, current_app, g, request
from werkzeug.local import LocalProxy

import metrics
from addresses import client_ip
from companies import company_of, registry_of
from errors import ApiError
from rehive_client import (
    RehiveForbidden,
    RehiveRequestError,
    RehiveUnauthorized,
    admin,
)

F = TypeVar("F", bound=Callable[..., Any])

# Visible ASCII only: a token with spaces, control or non-ASCII characters is malformed, not a 500.
_TOKEN = re.compile(r"[!-~]{1,512}")
_CHALLENGE = {"WWW-Authenticate": "Token"}


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, dict(_CHALLENGE))


def parse_token(header: str | None) -> str:
    """Return the token of an `Authorization: Token <token>` header, or raise a 401."""
    if not header:
        raise _unauthorized("Authentication credentials were not provided.")
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "token" or not _TOKEN.fullmatch(parts[1]):
        raise _unauthorized("Malformed Authorization header; expected 'Token <token>'.")
    return parts[1]


class TTLCache:
    """A small thread-safe LRU of answers that expire after `ttl` seconds (cachetools' TTLCache, locked)."""

    def __init__(self, ttl: float, maxsize: int) -> None:
        self.ttl = ttl
        self.maxsize = maxsize
        # cachetools' caches are not thread-safe; gunicorn's threads share this one, hence the lock.
        self._items: cachetools.TTLCache[bytes, dict] = cachetools.TTLCache(
            maxsize=maxsize,
            ttl=max(ttl, 0.001),
            timer=time.monotonic,  # ttl <= 0: never used
        )
        self._lock = threading.Lock()

    def get(self, key: bytes) -> dict | None:
        """Return the live value for `key`, or None."""
        if self.ttl <= 0:
            return None
        with self._lock:
            return self._items.get(key)

    def put(self, key: bytes, value: dict) -> None:
        """Remember `value` for `ttl` seconds, evicting the least recently used when full."""
        if self.ttl <= 0:
            return
        with self._lock:
            self._items[key] = value

    def __len__(self) -> int:
        with self._lock:
            self._items.expire()
            return len(self._items)


def cache_key(token: str, client_ip: str | None) -> bytes:
    """Key the cache by a hash of the token (never the token) and the address it came from.

    The address is part of the key because Rehive evaluates IP access rules per call.
    """
    return hashlib.sha256(f"{token}\0{client_ip or ''}".encode()).digest()


def init_app(app: Flask) -> None:
    """Give the app its auth cache."""
    settings = app.config["SETTINGS"]
    app.extensions["auth_cache"] = TTLCache(settings.auth_cache_seconds, settings.auth_cache_size)
    # Tokens Rehive answered 401 for: a bogus token sent in a loop must not cost a Rehive call each time.
    app.extensions["auth_refusals"] = TTLCache(settings.auth_cache_seconds, settings.auth_cache_size)


def our_company() -> str:
    """Return the identifier of the Rehive company this service serves."""
    return company_of().get()


def client_address() -> str | None:
    """Return the caller's address (after ProxyFix); an IPv4-mapped IPv6 one (`::ffff:a.b.c.d`) as IPv4."""
    ip = client_ip(request.remote_addr)
    return request.remote_addr if ip is None else str(ip)


def authenticate() -> dict:
    """Return the Rehive user behind this request's token, checked to be of our company."""
    token = parse_token(request.headers.get("Authorization"))
    client_ip = client_address()
    cache: TTLCache = current_app.extensions["auth_cache"]
    key = cache_key(token, client_ip)
    user = cache.get(key)
    metrics.AUTH_CACHE.labels("miss" if user is None else "hit").inc()
    if user is None:
        # A 401 is about the token, not the address it came from: keyed by the token's hash alone.
        refusals: TTLCache = current_app.extensions["auth_refusals"]
        refusal_key = cache_key(token, None)
        refused = refusals.get(refusal_key)
        if refused is not None:
            raise _unauthorized(refused["message"])
        try:
            user = admin.whoami(token, forwarded_for=client_ip)
        except RehiveUnauthorized as exc:
            refusals.put(refusal_key, {"message": exc.message})
            raise _unauthorized(exc.message) from exc
        except RehiveForbidden as exc:
            raise ApiError(403, exc.message) from exc
        except RehiveRequestError as exc:  # Rehive said no in some other way (e.g. 400)
            raise ApiError(401 if exc.status == 400 else 502, exc.message) from exc
        # Other RehiveErrors (429, outage, timeout) map like any upstream failure.
        if not current_app.config["SETTINGS"].multi and user.get("company") != our_company():
            raise ApiError(403, "This user does not belong to this service's company.")
        cache.put(key, user)
    if current_app.config["SETTINGS"].multi:
        # Asked on every request, cache hit or not: a company deactivated a second ago is refused now.
        registry_of().require_serving(user.get("company"))
        g.company = user["company"]  # `admin` is now this company's client (rehive_client.current_company)
    return user


def group_names(user: dict) -> set[str]:
    """Return the names of the groups a Rehive user is in."""
    groups = user.get("groups") or []
    return {grp.get("name") for grp in groups if isinstance(grp, dict)}


def require_user(view: F) -> F:
    """Let the view run only for a Rehive user of our company; the user is `current_user`."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        company_of().require_checked()
        g.rehive_user = authenticate()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def require_groups(*names: str) -> Callable[[F], F]:
    """Like require_user, and the user must be in one of the groups `names` (else 403)."""
    allowed = frozenset(names)

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            company_of().require_checked()
            user = authenticate()
            if not group_names(user) & allowed:
                raise ApiError(403, "Your group may not use this endpoint.")
            g.rehive_user = user
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def _current_user() -> dict:
    return g.rehive_user


current_user: dict = LocalProxy(_current_user)  # type: ignore[assignment]
