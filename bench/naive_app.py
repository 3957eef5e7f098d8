"""`GET /custom/transactions/` written the way people build it today, for the `naive` row.

A new HTTP client per call (`requests.get`: a fresh Session each time), `Connection: close` so no
connection is ever reused, no cache, and `GET /3/auth/` on every request before the admin call.
Served by gunicorn as "bench.naive_app:create_app()" with the service's own gunicorn settings.
"""

from __future__ import annotations

import os

import requests
from flask import Flask, Response, jsonify, request

TIMEOUT = (3.0, 10.0)


def create_app() -> Flask:
    """Build the naive app from REHIVE_API_URL, REHIVE_ADMIN_TOKEN and REHIVE_COMPANY."""
    app = Flask(__name__)
    api_url = os.environ["REHIVE_API_URL"].rstrip("/") + "/"
    admin_token = os.environ["REHIVE_ADMIN_TOKEN"]
    company = os.environ["REHIVE_COMPANY"]

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/custom/transactions/")
    def list_transactions() -> Response | tuple[Response, int]:
        who = requests.get(
            api_url + "auth/",
            headers={"Authorization": request.headers.get("Authorization", ""), "Connection": "close"},
            timeout=TIMEOUT,
        )
        if who.status_code != 200:
            return jsonify(status="error", message="Invalid token."), 401
        user = who.json()["data"]
        if user.get("company") != company:
            return jsonify(status="error", message="Not our company."), 403
        listing = requests.get(
            api_url + "admin/transactions/",
            params={"user": user["id"]},
            headers={"Authorization": f"Token {admin_token}", "Connection": "close"},
            timeout=TIMEOUT,
        )
        return jsonify(status="success", data=listing.json()["data"])

    return app
