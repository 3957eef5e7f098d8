"""Settings that would quietly mean something else are refused at start-up, naming the culprit."""

import pytest

from app import create_app
from settings import ConfigError, load_settings

MINIMAL = {"REHIVE_ADMIN_TOKEN": "admin-token", "REHIVE_WEBHOOK_SECRET": "hook-secret"}
NUMBERS = [
    "AUTH_CACHE_SECONDS",
    "AUTH_CACHE_SIZE",
    "TRUSTED_PROXIES",
    "REHIVE_TIMEOUT",
    "WEBHOOK_MAX_BYTES",
    "WEBHOOK_WORKER_THREADS",
    "WEBHOOK_LEASE_SECONDS",
    "WEBHOOK_RETRY_FIRST_SECONDS",
    "WEBHOOK_RETRY_MAX_SECONDS",
    "WEBHOOK_MAX_ATTEMPTS",
    "SAVINGS_PERCENT",
]


@pytest.mark.parametrize(
    "value", ["nan", "NaN", "NAN", "inf", "INF", "Infinity", "-inf", "-Infinity", "+inf"]
)
@pytest.mark.parametrize("name", NUMBERS)
def test_a_number_that_is_not_finite_stops_the_start_and_is_named(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({**MINIMAL, name: value})


def test_a_nan_cache_lifetime_would_otherwise_never_expire():
    with pytest.raises(ConfigError, match=r"AUTH_CACHE_SECONDS must be a finite number, got 'nan'"):
        load_settings({**MINIMAL, "AUTH_CACHE_SECONDS": "nan"})


@pytest.mark.parametrize("entry", ["34.91.230.165/0", "1.2.3.4/0", "34.91.230.165/24", "2001:db8::1/64"])
def test_an_allow_list_entry_with_host_bits_set_stops_the_start_and_is_named(settings, entry):
    with pytest.raises(ConfigError, match="WEBHOOK_ALLOWED_IPS") as info:
        create_app(settings.replace(webhook_allowed_ips=frozenset({entry, "34.91.230.165"})))
    assert f"{entry} (host bits set)" in str(info.value)


@pytest.mark.parametrize("entry", ["34.91.230.165", "34.91.230.0/24", "0.0.0.0/0", "2001:db8::/64", "::1"])
def test_strict_entries_still_start(settings, entry):
    create_app(settings.replace(webhook_allowed_ips=frozenset({entry})))
