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
# The seeded owners of the two companies, who register and activate the extension in multi mode.
COMPANY_ADMINS = {
    "demo": ("admin@demo.test", "admin-pass-123"),
    "other": ("admin@other.test", "admin-pass-123"),
}
SERVICE_NAME = "Savings"


class InstallFailed(Exception):
    """The stand-in refused to register or activate the extension (its message says why)."""


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

    def call(self, token: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the stand-in's API (`/3/<path>`) with `token` (a company admin's, say)."""
        return self.http.request(
            method, f"{self.url}/3/{path}", headers={"Authorization": f"Token {token}"}, timeout=15, **kwargs
        )

    def company_admin(self, company: str) -> str:
        """Log the seeded owner of `company` in and return their token."""
        email, password = COMPANY_ADMINS[company]
        return self.login(email, password, company)

    def install(self, company: str, service_url: str, *, token: str | None = None) -> int:
        """Register the extension for `company` and activate it, as its admin would; return the service id.

        Activation makes the stand-in create a service user and POST its token to `<url>/activate/`.
        """
        token = token or self.company_admin(company)
        created = self.call(
            token, "POST", "admin/services/", json={"name": SERVICE_NAME, "url": service_url + "/"}
        )
        if created.status_code != 201:
            raise InstallFailed(f"POST /3/admin/services/ answered {created.status_code}: {created.text}")
        service_id = created.json()["data"]["id"]
        self.activate(company, service_id, True, token=token)
        return service_id

    def activate(self, company: str, service_id: int, active: bool, *, token: str | None = None) -> None:
        """Activate (or deactivate) a registered extension: `PATCH admin/services/<id>/ {"active"}`."""
        token = token or self.company_admin(company)
        answer = self.call(token, "PATCH", f"admin/services/{service_id}/", json={"active": active})
        if answer.status_code != 200 or answer.json()["data"]["active"] is not active:
            raise InstallFailed(
                f"{company}: PATCH {{'active': {active}}} answered {answer.status_code}: " + answer.text[:300]
            )

    def control(self, path: str = "", **settings: Any) -> Any:
        """Read `/_control/<path>`, or, with settings, POST them there (fault knobs, reset)."""
        if settings:
            response = self.http.post(f"{self.url}/_control/{path}", json=settings, timeout=10)
        else:
            response = self.http.get(f"{self.url}/_control/{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def act(self, path: str) -> Any:
        """POST `{}` to `/_control/<path>` (a rotation, a purge) and return its answer."""
        response = self.http.post(f"{self.url}/_control/{path}", json={}, timeout=30)
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        """Close the pooled connections."""
        self.http.close()
