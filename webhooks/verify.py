"""Check `Authorization: Secret <secret>` in constant time; a pure function, no Flask."""

from __future__ import annotations

import hmac
from collections.abc import Iterable


class WebhookAuthError(Exception):
    """The request does not carry one of our webhook secrets."""


def verify_secret(header: str | None, secrets: Iterable[str]) -> None:
    """Return if `header` is `Secret <s>` for one of `secrets`, else raise WebhookAuthError."""
    if not header:
        raise WebhookAuthError("Authentication credentials were not provided.")
    scheme, _, given = header.strip().partition(" ")
    given = given.strip()
    if scheme.lower() != "secret" or not given:
        raise WebhookAuthError("Malformed Authorization header; expected 'Secret <secret>'.")
    # Compare bytes: compare_digest refuses non-ASCII str with a TypeError, which would be a 500.
    given_bytes = given.encode("utf-8", "surrogatepass")
    matched = False
    for secret in secrets:
        if secret:  # an unset secret must never match an empty or missing one
            matched |= hmac.compare_digest(given_bytes, secret.encode("utf-8", "surrogatepass"))
    if not matched:
        raise WebhookAuthError("Invalid webhook secret.")
