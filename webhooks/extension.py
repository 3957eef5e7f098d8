"""The webhooks state each app carries: its inbox, its handler registry and its worker pool."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from addresses import Network, parse_networks
from settings import Settings
from store import Store
from webhooks.registry import Registry
from webhooks.worker import WorkerPool

__all__ = ["Network", "Webhooks", "parse_networks", "secrets_of", "webhooks_of"]


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


def webhooks_of(app: Flask | None = None) -> Webhooks:
    """Return the webhooks state of `app` (or of the current app)."""
    return (app or current_app).extensions["webhooks"]
