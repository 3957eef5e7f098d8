"""Settings come from the environment once, at start-up, and a bad environment stops the start."""

import os

import pytest

from app import create_app
from settings import ConfigError, load_settings

MINIMAL = {"REHIVE_ADMIN_TOKEN": "admin-token", "REHIVE_WEBHOOK_SECRET": "hook-secret"}


def test_defaults_are_the_documented_ones():
    settings = load_settings(MINIMAL)
    assert settings.rehive_api_url == "https://api.rehive.com/3/"
    assert settings.company is None
    assert settings.auth_cache_seconds == 10
    assert settings.transactions_all_groups == {"admin"}
    assert settings.trusted_proxies == 0
    assert settings.cors_origins == ()
    assert (settings.connect_timeout, settings.read_timeout) == (3, 10)
    assert settings.database_path == "instance/extension.sqlite3"
    assert settings.webhook_max_bytes == 1_048_576
    assert settings.webhook_worker == "thread"
    assert (settings.webhook_lease_seconds, settings.webhook_max_attempts) == (30, 8)
    assert (settings.webhook_retry_first_seconds, settings.webhook_retry_max_seconds) == (5, 600)
    assert settings.savings_percent == 0


def test_lists_are_comma_separated_and_trimmed():
    settings = load_settings(
        {
            **MINIMAL,
            "TRANSACTIONS_ALL_GROUPS": " admin, support ,",
            "CORS_ORIGINS": "https://a.test,https://b.test",
        }
    )
    assert settings.transactions_all_groups == {"admin", "support"}
    assert settings.cors_origins == ("https://a.test", "https://b.test")


def test_api_url_gets_a_trailing_slash():
    assert load_settings({**MINIMAL, "REHIVE_API_URL": "http://127.0.0.1:8100/3"}).rehive_api_url == (
        "http://127.0.0.1:8100/3/"
    )


def test_every_missing_variable_is_named_in_one_message():
    with pytest.raises(ConfigError) as info:
        load_settings({"AUTH_CACHE_SECONDS": "soon", "WEBHOOK_WORKER": "celery"})
    message = str(info.value)
    for name in ("REHIVE_ADMIN_TOKEN", "REHIVE_WEBHOOK_SECRET", "AUTH_CACHE_SECONDS", "WEBHOOK_WORKER"):
        assert name in message


def test_blank_secrets_count_as_missing():
    with pytest.raises(ConfigError, match="REHIVE_ADMIN_TOKEN"):
        load_settings({**MINIMAL, "REHIVE_ADMIN_TOKEN": "   "})


def test_secrets_never_show_in_repr():
    settings = load_settings({**MINIMAL, "REHIVE_WEBHOOK_SECRET_PREVIOUS": "old-secret"})
    text = repr(settings)
    assert "admin-token" not in text and "hook-secret" not in text and "old-secret" not in text


@pytest.fixture
def environ(monkeypatch, tmp_path):
    """A private copy of os.environ (load_dotenv writes to it) and an empty working directory."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REHIVE_", "WEBHOOK_"))}
    monkeypatch.setattr(os, "environ", env)
    monkeypatch.chdir(tmp_path)
    return env


def test_create_app_refuses_to_start_without_secrets(environ):
    with pytest.raises(ConfigError, match="REHIVE_ADMIN_TOKEN is required"):
        create_app()


def test_create_app_reads_dotenv_without_overriding_the_environment(environ, tmp_path):
    (tmp_path / ".env").write_text(
        "REHIVE_ADMIN_TOKEN=from-dotenv\nREHIVE_WEBHOOK_SECRET=from-dotenv\n"
        "REHIVE_COMPANY=dotenv-co\nWEBHOOK_WORKER=off\n"
    )
    environ["REHIVE_COMPANY"] = "env-co"
    environ["DATABASE_PATH"] = str(tmp_path / "db.sqlite3")
    app = create_app()
    assert app.config["SETTINGS"].admin_token == "from-dotenv"
    assert app.config["SETTINGS"].company == "env-co"


def test_the_store_defaults_to_sqlite_in_the_project_instance_folder():
    from devtools.processes import ROOT
    from store import sqlite_path, url_of

    settings = load_settings(MINIMAL)
    assert settings.database_url == "sqlite:///instance/extension.sqlite3"
    assert sqlite_path(url_of(settings)) == str(ROOT / "instance" / "extension.sqlite3")
    assert (settings.database_pool_size, settings.database_listen, settings.webhook_retention_days) == (
        10,
        True,
        30,
    )
    assert sqlite_path("sqlite:////abs/inbox.db") == "/abs/inbox.db"


def test_database_path_is_a_sqlite_shorthand():
    from store import url_of

    settings = load_settings({**MINIMAL, "DATABASE_PATH": "/tmp/x/inbox.sqlite3"})
    assert url_of(settings) == "sqlite:////tmp/x/inbox.sqlite3"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DATABASE_URL": "sqlite:///a.db", "DATABASE_PATH": "b.db"}, "not both"),
        ({"DATABASE_URL": "mysql://u:pw-canary@h/db"}, "'mysql'"),
        ({"DATABASE_URL": "inbox.sqlite3"}, "'(none)'"),
        ({"DATABASE_URL": "sqlite://relative.db"}, "sqlite:///"),
        ({"DATABASE_URL": "postgresql://u:pw-canary@h:5432"}, "names no database"),
        ({"DATABASE_LISTEN": "maybe"}, "DATABASE_LISTEN"),
        ({"DATABASE_POOL_SIZE": "0"}, "DATABASE_POOL_SIZE"),
        ({"WEBHOOK_RETENTION_DAYS": "-1"}, "WEBHOOK_RETENTION_DAYS"),
    ],
)
def test_a_bad_store_setting_stops_the_start_naming_it_and_never_the_password(env, named):
    with pytest.raises(ConfigError) as caught:
        load_settings({**MINIMAL, **env})
    assert named in str(caught.value)
    assert "pw-canary" not in str(caught.value)


def test_postgres_settings_are_read():
    settings = load_settings(
        {
            **MINIMAL,
            "DATABASE_URL": "postgresql://u:pw-canary@db.internal:5432/inbox?sslmode=require",
            "DATABASE_POOL_SIZE": "4",
            "DATABASE_LISTEN": "off",
        }
    )
    assert settings.database_url.endswith("/inbox?sslmode=require")
    assert (settings.database_pool_size, settings.database_listen) == (4, False)
    assert "pw-canary" not in repr(settings)
