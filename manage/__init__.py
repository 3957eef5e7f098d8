"""The manage page (`/manage/`) and its API (`/manage/api/`): one company's inbox, for its admins.

`init_app(app)` creates the company_settings table, registers both blueprints and adds the safety
headers to everything under `/manage/`.
"""

from __future__ import annotations

from flask import Flask

from manage import api, views
from webhooks.extension import webhooks_of

__all__ = ["init_app"]


def init_app(app: Flask) -> None:
    """Wire the page and the API into `app` (after webhooks.init_app, whose inbox they use)."""
    webhooks_of(app).inbox.create_manage_schema()
    api.init_app(app)
    views.init_app(app)
