"""Calls made to the local Rehive stand-in from outside: logging in, its admin API, its control API.

The demo and the end-to-end tests use it to play the app (A: log in) and the platform (credits,
webhook deliveries), and to look inside the stand-in (`/_control/`).
"""

from __future__ import annotations

from typing import Any

import requests

from local_rehive import DEMO_SERVICE_TOKEN

# The stand-in's seeded service user of company `demo`: a fixed, public token, not a secret.
LOCAL_ADMIN_TOKEN = DEMO_SERVICE_TOKEN


class StandIn:
    """A client of one running stand-in at `url` (its root, without `/3/`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()

    def login(self, email: str, password: str, company: str = "demo") -> str:
        """Log a user in, as an app would (`POST /3/auth/login/`), and return the token."""
        response = self.http.post(
            f"{self.url}/3/auth/login/",
            json={"user": email, "company": company, "password": password},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()["data"]["token"]

    def admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the stand-in's API (`/3/<path>`) with the service user's token."""
        return self.http.request(
            method,
            f"{self.url}/3/{path}",
            headers={"Authorization": f"Token {LOCAL_ADMIN_TOKEN}"},
            timeout=10,
            **kwargs,
        )

    def control(self, path: str = "", **settings: Any) -> Any:
        """Read `/_control/<path>`, or, with settings, POST them there (fault knobs, reset)."""
        if settings:
            response = self.http.post(f"{self.url}/_control/{path}", json=settings, timeout=10)
        else:
            response = self.http.get(f"{self.url}/_control/{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        """Close the pooled connections."""
        self.http.close()
