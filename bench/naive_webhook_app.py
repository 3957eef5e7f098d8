"""`POST /webhooks/` written the 2018 demo's way, for the `naive webhook` row.

The handler's work happens inside the request: check the secret, read the event, make the handler's
Rehive call (one admin GET, as the drain row's handler makes) with a new client and `Connection: close`,
and only then answer. Nothing is stored, so a slow or failing Rehive means a slow or failed delivery.
Served by gunicorn as "bench.naive_webhook_app:create_app()" with the service's own gunicorn settings.
"""

from __future__ import annotations

import hmac
import os

import requests
from flask import Flask, Response, jsonify, request

TIMEOUT = (3.0, 10.0)


def create_app() -> Flask:
    """Build the naive webhook app from REHIVE_API_URL, REHIVE_ADMIN_TOKEN and REHIVE_WEBHOOK_SECRET."""
    app = Flask(__name__)
    api_url = os.environ["REHIVE_API_URL"].rstrip("/") + "/"
    admin_token = os.environ["REHIVE_ADMIN_TOKEN"]
    expected = f"Secret {os.environ['REHIVE_WEBHOOK_SECRET']}".encode()

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.post("/webhooks/")
    def receive() -> Response | tuple[Response, int]:
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            return jsonify(status="error", message="Invalid secret."), 401
        event = request.get_json()
        listing = requests.get(
            api_url + "admin/transactions/",
            params={"page_size": "1"},
            headers={"Authorization": f"Token {admin_token}", "Connection": "close"},
            timeout=TIMEOUT,
        )
        listing.raise_for_status()
        return jsonify(status="success", id=event["id"])

    return app
