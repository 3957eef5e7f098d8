"""The webhooks state each app carries: its inbox, its handler registry and its worker pool."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from flask import Flask, current_app

from settings import ConfigError, Settings
from store import Store
from webhooks.registry import Registry
from webhooks.worker import WorkerPool

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class Webhooks:
    """Everything `init_app` built for one app (in `app.extensions["webhooks"]`)."""

    inbox: Store
    registry: Registry
    pool: WorkerPool
    secrets: tuple[str, ...]
    allowed_networks: tuple[Network, ...]


def secrets_of(settings: Settings) -> tuple[str, ...]:
    """Return the secrets a delivery may carry: the current one and, while rotating, the previous."""
    return tuple(s for s in (settings.webhook_secret, settings.webhook_secret_previous) if s)


def parse_networks(entries: Iterable[str], name: str = "WEBHOOK_ALLOWED_IPS") -> tuple[Network, ...]:
    """Parse an allow-list setting's entries (addresses or CIDR ranges), naming every bad one.

    Strictly: `34.91.230.165/0` (host bits set) would silently allow everyone, so it is refused.
    """
    networks, bad = [], []
    for entry in sorted(entries):
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            bad.append(f"{entry} (host bits set)" if "host bits set" in str(exc) else entry)
    if bad:
        raise ConfigError(f"Cannot start: {name} has invalid addresses: {', '.join(bad)}.")
    return tuple(networks)


def webhooks_of(app: Flask | None = None) -> Webhooks:
    """Return the webhooks state of `app` (or of the current app)."""
    return (app or current_app).extensions["webhooks"]
