"""`create_app()`: the stand-in as a Flask app: the API, the control endpoint, faults and errors."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, request

from local_rehive import api, control, services
from local_rehive.errors import register_error_handlers
from local_rehive.knobs import FaultInjector, Knobs
from local_rehive.state import Platform

DEFAULT_SEED = 1


def create_app(*, seed: int = DEFAULT_SEED, webhook_timeout: float = 5.0, **knobs: Any) -> Flask:
    """Build a stand-in seeded from `seed`; `knobs` are Knobs fields (latency_ms, throttle, ...)."""
    app = Flask("local_rehive")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.strict_slashes = False  # answer `/3/auth` as well as `/3/auth/`
    platform = Platform(seed=seed, knobs=Knobs().updated(knobs), webhook_timeout=webhook_timeout)
    app.extensions["local_rehive"] = platform
    app.register_blueprint(api.bp)
    app.register_blueprint(control.bp)
    services.init_app(app)
    register_error_handlers(app)
    app.after_request(_cors)
    app.wsgi_app = FaultInjector(app.wsgi_app, lambda: platform.knobs)  # type: ignore[method-assign]
    return app


def _cors(response: Response) -> Response:
    """Let browser pages (the service's /manage/ page) call `/3/`, as Rehive's API lets its dashboard.

    Any origin: the API is authenticated by the Authorization header, never by cookies.
    """
    if request.path.startswith("/3/"):
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Idempotency-Key"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE"
        response.headers["Access-Control-Expose-Headers"] = "Retry-After"
        response.headers["Access-Control-Max-Age"] = "600"
    return response
