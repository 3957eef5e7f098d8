"""Request ids and log lines: every request gets an id that its log lines and Rehive calls carry."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid
from datetime import UTC, datetime

from flask import Flask, Response, request

REQUEST_ID_HEADER = "X-Request-ID"
# Kept only when it is short and harmless in a log line or a header; anything else gets a new id.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """Return the id of the request this thread is serving, or None outside a request."""
    return _request_id.get()


def choose_request_id(incoming: str | None) -> str:
    """Keep an incoming X-Request-ID of safe characters (at most 64), else make a new one."""
    if incoming and _SAFE_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Put the current request id (or "-") on every record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or _request_id.get(),
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(log_format: str) -> None:
    """Give the root logger one handler in `log_format` (text or json), unless pytest brought its own."""
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if getattr(handler, "_rehive_ext", False)]
    if not root.handlers or ours:  # gunicorn and `flask run` bring none; pytest brings its own
        handler = ours[0] if ours else logging.StreamHandler()
        handler._rehive_ext = True  # type: ignore[attr-defined]
        handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
        if not ours:
            root.addHandler(handler)
        root.setLevel(logging.INFO)
    for name in ("service", "webhooks", "rehive"):
        logging.getLogger(name).setLevel(logging.INFO)


def init_app(app: Flask) -> None:
    """Give each request an id, answer it in X-Request-ID, and forget it when the request ends."""

    @app.before_request
    def _start() -> None:
        token = _request_id.set(choose_request_id(request.headers.get(REQUEST_ID_HEADER)))
        request.environ["rehive_ext.request_id_token"] = token

    @app.after_request
    def _answer(response: Response) -> Response:
        request_id = _request_id.get()
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    @app.teardown_request
    def _forget(error: BaseException | None) -> None:
        token = request.environ.pop("rehive_ext.request_id_token", None)
        if token is not None:
            _request_id.reset(token)
