"""Real servers on loopback: the local Rehive stand-in and gunicorn serving the app."""

from __future__ import annotations

import os
import secrets

import pytest
import requests

from devtools.processes import service_env, start_local_rehive, start_service
from devtools.run_local import LOCAL_ADMIN_TOKEN, register_webhooks


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
def start(tmp_path, rehive, webhook_secret):
    """Start gunicorn serving the app against the stand-in; every server is stopped after the test."""
    started = []

    def start_app(register=True, sock=None, workers=1, threads=4, **settings: str):
        env = service_env(
            os.environ,
            REHIVE_API_URL=rehive.url + "/3/",
            REHIVE_ADMIN_TOKEN=LOCAL_ADMIN_TOKEN,
            REHIVE_WEBHOOK_SECRET=webhook_secret,
            DATABASE_PATH=str(tmp_path / "inbox.sqlite3"),
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


class Rehive:
    """Calls a test makes to the stand-in: logging in, its admin API, its control endpoint."""

    def __init__(self, url: str) -> None:
        self.url = url

    def login(self, email: str, password: str, company: str = "demo") -> str:
        response = requests.post(
            f"{self.url}/3/auth/login/",
            json={"user": email, "company": company, "password": password},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()["data"]["token"]

    def admin(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(
            method,
            f"{self.url}/3/{path}",
            headers={"Authorization": f"Token {LOCAL_ADMIN_TOKEN}"},
            timeout=10,
            **kwargs,
        )

    def control(self, path: str = "", **settings):
        if settings:
            response = requests.post(f"{self.url}/_control/{path}", json=settings, timeout=10)
        else:
            response = requests.get(f"{self.url}/_control/{path}", timeout=10)
        response.raise_for_status()
        return response.json()


@pytest.fixture
def stand_in(rehive) -> Rehive:
    return Rehive(rehive.url)
