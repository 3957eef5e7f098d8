"""`GET /manage/`: the page itself, and the safety headers of everything under `/manage/`."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, render_template, request, url_for

bp = Blueprint(
    "manage",
    __name__,
    url_prefix="/manage",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

# The page is ours alone: no inline script or style, nothing from elsewhere, never in a frame.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self' {rehive}; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; "
    "object-src 'none'"
)
API_POLICY = "default-src 'none'; frame-ancestors 'none'"


def rehive_origin(api_url: str) -> str:
    """Return the origin (scheme://host[:port]) of REHIVE_API_URL, where the page logs in."""
    parts = urlsplit(api_url)
    return f"{parts.scheme}://{parts.netloc}"


@bp.get("/")
def page() -> str:
    """The manage page; everything it shows is fetched by manage.js once the admin signs in."""
    settings = current_app.config["SETTINGS"]
    return render_template(
        "manage.html",
        rehive_api_url=settings.rehive_api_url,
        company=settings.company or "",
        local_mode=settings.local_mode,
        api_url=url_for("manage_api.status").removesuffix("status/"),
    )


def _safety_headers(response: Response) -> Response:
    if not request.path.startswith("/manage/"):
        return response
    headers = response.headers
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"  # for browsers that ignore frame-ancestors
    if request.path.startswith("/manage/api/"):
        headers["Cache-Control"] = "no-store"
        headers["Content-Security-Policy"] = API_POLICY
    else:
        origin = rehive_origin(current_app.config["SETTINGS"].rehive_api_url)
        headers["Content-Security-Policy"] = PAGE_POLICY.format(rehive=origin)
        if request.path == "/manage/":
            headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    """Register the page and the headers (on every answer under /manage/, errors included)."""
    app.register_blueprint(bp)
    app.after_request(_safety_headers)
