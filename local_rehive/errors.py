"""Rehive's error envelope, and the one place where every error of the stand-in becomes JSON."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger("local_rehive")

# DRF's default texts, which Rehive's (Django REST framework) API passes through.
_HTTP_MESSAGES = {404: "Not found.", 415: "Unsupported media type in request."}


class ApiError(Exception):
    """An error answer: status, message, optional per-field `data` and extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        data: dict | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.data = data
        self.headers = headers or {}


def field_error(field: str, message: str) -> ApiError:
    """Return a 400 tied to one request field, shaped as Rehive's validation errors are."""
    return ApiError(400, message, data={field: [message]})


def error_response(error: ApiError) -> Response:
    """Render `error` as `{"status": "error", "message": ..., "data"?: ...}`."""
    body: dict = {"status": "error", "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    response = jsonify(body)
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def register_error_handlers(app: Flask) -> None:
    """Answer every error, including 404/405 and crashes, with the JSON envelope."""

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status == 405:
            message = f'Method "{request.method}" not allowed.'
        else:
            message = _HTTP_MESSAGES.get(status, f"{error.name}.")
        headers = {name: value for name, value in error.get_headers() if name.lower() != "content-type"}
        return error_response(ApiError(status, message, headers=headers))

    @app.errorhandler(Exception)
    def _crash(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ApiError(500, "Internal server error."))
