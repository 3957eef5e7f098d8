"""Real servers on loopback: the local Rehive stand-in and gunicorn serving the app."""

from __future__ import annotations

import os
import secrets

import pytest

from devtools.processes import service_env, start_local_rehive, start_service
from devtools.run_local import register_webhooks
from devtools.stand_in import LOCAL_ADMIN_TOKEN, StandIn


@pytest.fixture
def rehive(tmp_path):
    """A fresh stand-in for Rehive, on a free port."""
    process = start_local_rehive(log_path=tmp_path / "local_rehive.log")
    yield process
    process.stop()


@pytest.fixture
def webhook_secret() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def start(tmp_path, rehive, webhook_secret, database_url):
    """Start gunicorn serving the app against the stand-in; every server is stopped after the test."""
    started = []

    def start_app(register=True, sock=None, workers=1, threads=4, **settings: str):
        env = service_env(
            os.environ,
            REHIVE_API_URL=rehive.url + "/3/",
            REHIVE_ADMIN_TOKEN=LOCAL_ADMIN_TOKEN,
            REHIVE_WEBHOOK_SECRET=webhook_secret,
            DATABASE_URL=database_url,  # a temp SQLite file, or a fresh Postgres database
            **settings,
        )
        service = start_service(
            env, sock, log_path=tmp_path / "service.log", workers=workers, threads=threads
        )
        started.append(service)
        if register:
            register_webhooks(rehive.url, service.url, webhook_secret)
        return service

    yield start_app
    for service in started:
        service.stop()


@pytest.fixture
def stand_in(rehive):
    """Calls to the stand-in: log in as an app, act as the platform, read its control API."""
    client = StandIn(rehive.url)
    yield client
    client.close()
