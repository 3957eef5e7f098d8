"""The ack floor: a bare Flask view that answers `POST /webhooks/` with 202 and does nothing else.

Served by gunicorn as "bench.bare_app:create_app()" with the service's own gunicorn settings, so
the only difference with the real row is the work the service does per delivery.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify


def create_app() -> Flask:
    """Build the floor app: the same answer as the service's, with nothing behind it."""
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.post("/webhooks/")
    def receive() -> tuple[Response, int]:
        return jsonify(status="success"), 202

    return app
