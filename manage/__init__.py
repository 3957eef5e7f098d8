"""The manage page (`/manage/`) and its API (`/manage/api/`): one company's inbox, for its admins.

`init_app(app)` registers both blueprints and adds the safety headers to everything under `/manage/`;
the company_settings table is part of the store's schema (store/sql/<backend>/0003_*.sql).
"""

from __future__ import annotations

from flask import Flask

from manage import api, views

__all__ = ["init_app"]


def init_app(app: Flask) -> None:
    """Wire the page and the API into `app` (after webhooks.init_app, whose inbox they use)."""
    api.init_app(app)
    views.init_app(app)
