"""Each Rehive user's share of the company's Rehive quota: CUSTOM_RATE_LIMIT calls per server process.

The company's Rehive quota is shared by every user and by the webhook handlers, so one user looping
`page_size=250` must not spend it for everyone. The key is the Rehive user id, known only once
`require_user` has authenticated the caller (its `/3/auth/` lookup is itself cached, hits and 401s
alike), so the check is a decorator placed under `@require_user`, not a before-request hook.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app
from limits import RateLimitItem
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from auth import current_user
from errors import ApiError
from settings import ConfigError, parse_rate

F = TypeVar("F", bound=Callable[..., Any])
SCOPE = "custom"


class UserQuota:
    """A moving-window count of calls per Rehive user, in this process's memory."""

    def __init__(self, rate: RateLimitItem) -> None:
        self.rate = rate
        # A moving window, so a user cannot spend twice the rate across a window boundary.
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def take(self, user_id: str) -> int | None:
        """Count one call of `user_id`; return None if it may go on, else the seconds to wait."""
        if self._limiter.hit(self.rate, SCOPE, user_id):
            return None
        reset = self._limiter.get_window_stats(self.rate, SCOPE, user_id).reset_time
        return max(1, math.ceil(reset - time.time()))


def init_app(app: Flask) -> None:
    """Give the app its per-user quota, from CUSTOM_RATE_LIMIT."""
    value = app.config["SETTINGS"].custom_rate_limit
    try:
        rate = parse_rate(value)
    except ValueError:
        raise ConfigError(
            f"Cannot start: CUSTOM_RATE_LIMIT must be one rate like '120/minute', got {value!r}."
        ) from None
    app.extensions["user_quota"] = UserQuota(rate)


def per_user(view: F) -> F:
    """Let the view run only while the current user is within CUSTOM_RATE_LIMIT; else 429 + Retry-After."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wait = current_app.extensions["user_quota"].take(current_user["id"])
        if wait is not None:
            raise ApiError(429, "Too many requests; retry later.", {"Retry-After": str(wait)})
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
