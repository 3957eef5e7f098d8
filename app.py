"""The Flask service: `create_app()` builds it; gunicorn serves "app:create_app()"."""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import load_dotenv
from flask import Flask, Response, jsonify
from werkzeug.middleware.proxy_fix import ProxyFix

import activation
import auth
import companies
import companies_cli
import logs
import manage
import operations
import quota
import store.cli
import transactions
import webhooks
from errors import register_error_handlers
from rehive_client import admin
from settings import Settings, load_settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the service from `settings`, or from the environment and `.env` when None."""
    if settings is None:
        load_dotenv(".env")  # never overrides what the environment already says
        settings = load_settings(os.environ)
    logs.configure_logging(settings.log_format)

    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.json.sort_keys = False
    # No 308 (in HTML) from `/custom//transactions/` to `/custom/transactions/`: a 404 in JSON instead.
    app.url_map.merge_slashes = False
    if settings.trusted_proxies:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n)

    logs.init_app(app)
    register_error_handlers(app)
    admin.init_app(app)
    store.cli.init_app(app)
    companies.init_app(app)  # after the store: multi mode reads the registrations from it
    companies_cli.init_app(app)
    auth.init_app(app)
    quota.init_app(app)
    app.register_blueprint(transactions.bp)
    webhooks.init_app(app)
    operations.init_app(app)
    activation.init_app(app)  # /activate/, /deactivate/, /rotate/ (multi mode only)
    manage.init_app(app)  # the manage page and its API (after webhooks: it uses the inbox)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")  # liveness only: /readyz says whether to send traffic

    openapi = (Path(__file__).parent / "openapi.yaml").read_bytes()

    @app.get("/openapi.yaml")
    def openapi_document() -> Response:
        return Response(openapi, mimetype="application/yaml")

    return app
