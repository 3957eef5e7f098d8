"""Errors our endpoints raise, and the one place where every error becomes a JSON answer."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from rehive_client import (
    RehiveError,
    RehiveForbidden,
    RehiveRateLimited,
    RehiveRequestError,
    RehiveTimeout,
    RehiveUnauthorized,
    RehiveUnavailable,
)

log = logging.getLogger("service")


class ApiError(Exception):
    """An answer to the caller that is an error: status, message and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Return Rehive's error envelope `{"status": "error", "message": ...}`."""
    response = jsonify(status="error", message=message)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def from_rehive(error: RehiveError) -> ApiError:
    """Map a failed call made with *our admin token* to what our caller should see."""
    if isinstance(error, RehiveRateLimited):
        headers = {"Retry-After": error.retry_after} if error.retry_after else {}
        return ApiError(429, "Rehive is throttling requests; retry later.", headers)
    if isinstance(error, RehiveTimeout):
        return ApiError(504, "Rehive did not answer in time.")
    if isinstance(error, RehiveUnavailable):
        return ApiError(503, "Rehive is unavailable; retry later.")
    if isinstance(error, RehiveUnauthorized | RehiveForbidden):
        # Our own admin token was refused: the caller did nothing wrong.
        log.error(
            "Rehive refused the admin token (%s); check REHIVE_ADMIN_TOKEN (multi mode: the company's token;"
            " a 401 marks the company token_invalid until /rotate/ or a new activation)",
            error.status,
        )
        return ApiError(502, "The service is misconfigured: Rehive refused its credentials.")
    if isinstance(error, RehiveRequestError) and error.status in (400, 404):
        return ApiError(error.status, error.message)  # e.g. a filter value Rehive refuses, a page too far
    return ApiError(502, "Rehive gave an unexpected answer.")


def register_error_handlers(app: Flask) -> None:
    """Make every error, 404 and 405 included, a JSON envelope."""

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return error_response(error.status, error.message, error.headers)

    @app.errorhandler(RehiveError)
    def _rehive_error(error: RehiveError) -> Response:
        return _api_error(from_rehive(error))

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        headers = {}
        if error.code == 405 and error.valid_methods:
            headers["Allow"] = ", ".join(error.valid_methods)
        return error_response(error.code or 500, error.description or error.name, headers)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        # Werkzeug's HTML 500 page would break the JSON contract; the traceback goes to the log.
        log.exception("unhandled error")
        return error_response(500, "Internal error.")
