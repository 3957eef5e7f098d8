"""The service's Prometheus metrics: what each part counts, and how a scrape reads them.

Under gunicorn, `gunicorn.conf.py` sets PROMETHEUS_MULTIPROC_DIR before any worker imports this, so
prometheus_client keeps every worker's values in files there and a scrape adds them up. Elsewhere
(tests, `flask run`, CLI commands) the values live in this process.

No label ever holds a token, a user id or an event id: labels take values from small fixed sets
(outcomes, status classes, HTTP codes, and event names that have a registered handler).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger("service")

PREFIX = "rehive_ext_"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# `_created` series exist only in one process; under gunicorn they are absent. Same output everywhere.
disable_created_metrics()
# Our own registry, never prometheus_client's global one: a scrape must not show duplicates.
REGISTRY = CollectorRegistry(auto_describe=True)
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SLOW_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OTHER_EVENT = "other"

WEBHOOK_DELIVERIES = Counter(
    PREFIX + "webhook_deliveries",
    "Deliveries to POST /webhooks/ by outcome: stored, duplicate, or the reason it was refused.",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_ACK_SECONDS = Histogram(
    PREFIX + "webhook_ack_seconds",
    "Time from receiving a delivery to acknowledging it (stored or duplicate).",
    buckets=FAST_BUCKETS,
    registry=REGISTRY,
)
EVENTS_FINISHED = Counter(
    PREFIX + "webhook_events_finished",
    "Handler runs that settled an event, by outcome (done, failed, dead) and event name.",
    ["outcome", "event"],
    registry=REGISTRY,
)
HANDLER_SECONDS = Histogram(
    PREFIX + "webhook_handler_seconds",
    "Time to run an event's handlers, by event name.",
    ["event"],
    buckets=SLOW_BUCKETS,
    registry=REGISTRY,
)
REHIVE_REQUESTS = Counter(
    PREFIX + "rehive_requests",
    "HTTP requests to Rehive (each attempt) by kind (auth, admin_read, admin_write) and status class.",
    ["kind", "status_class"],
    registry=REGISTRY,
)
REHIVE_REQUEST_SECONDS = Histogram(
    PREFIX + "rehive_request_seconds",
    "Time of each HTTP request to Rehive, by kind.",
    ["kind"],
    buckets=SLOW_BUCKETS,
    registry=REGISTRY,
)
AUTH_CACHE = Counter(
    PREFIX + "auth_cache",
    "Lookups of the /3/auth/ answer cache by result (hit, miss).",
    ["result"],
    registry=REGISTRY,
)
CUSTOM_RESPONSES = Counter(
    PREFIX + "custom_responses",
    "Answers of the custom endpoints (/custom/...) by HTTP status.",
    ["status"],
    registry=REGISTRY,
)
RECONCILE_EVENTS = Counter(
    PREFIX + "webhook_reconcile_events",
    "Deliveries seen by reconcile, by result (listed, already_stored, added, unreadable).",
    ["result"],
    registry=REGISTRY,
)

# Status codes of POST /webhooks/ that mean one refusal reason each (403 has two; see receive.py).
DELIVERY_OUTCOMES = {
    202: "stored",
    200: "duplicate",
    400: "bad_request",
    401: "unauthorized",
    403: "address_refused",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    503: "not_stored",
}


def delivery_outcome(status: int, marked: str | None = None) -> str:
    """Return the outcome label of a webhook answer (`marked` by the view when the code is ambiguous)."""
    return marked or DELIVERY_OUTCOMES.get(status, "error" if status >= 500 else "other")


def event_label(name: str, known: Callable[[str], bool]) -> str:
    """Return `name` if a handler is registered for it by name, else "other" (bounded cardinality)."""
    return name if known(name) else OTHER_EVENT


def status_class(status: int | None, error: str | None = None) -> str:
    """Return "2xx".."5xx" ("429" apart: Rehive throttling us), or the failure (timeout, connection_error)."""
    if status is None:
        return error or "connection_error"
    return "429" if status == 429 else f"{status // 100}xx"


class ScrapeTimeGauges:
    """Gauges read when Prometheus scrapes, not kept in memory: the inbox by state, its oldest event.

    Multi-company mode plugs in here: `companies by state` is one more family read from the store.
    """

    def __init__(
        self,
        read: Callable[[], tuple[dict[str, int], float | None]],
        now: Callable[[], float],
        companies: Callable[[], dict[str, int]] | None = None,
    ):
        self._read = read
        self._now = now
        self._companies = companies  # multi mode: companies by state (active, token_invalid, inactive)

    def collect(self) -> Iterator[Metric]:
        """Read the store once and yield the gauge families."""
        try:
            counts, oldest = self._read()
        except Exception:  # a scrape must answer even when the store does not; readiness says why
            log.warning("metrics: could not read the inbox", exc_info=True)
            up = GaugeMetricFamily(PREFIX + "store_read_ok", "1 if the scrape could read the store.")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily(PREFIX + "store_read_ok", "1 if the scrape could read the store.")
        up.add_metric([], 1)
        yield up
        by_state = GaugeMetricFamily(
            PREFIX + "webhook_inbox_events", "Events in the inbox by state.", labels=["state"]
        )
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state
        age = GaugeMetricFamily(
            PREFIX + "webhook_inbox_oldest_unfinished_age_seconds",
            "Age of the oldest event that is not done or dead (0 when there is none).",
        )
        age.add_metric([], max(0.0, self._now() - oldest) if oldest is not None else 0.0)
        yield age
        if self._companies is not None:
            try:
                states = self._companies()
            except Exception:  # store_read_ok already told whether the store answers
                log.warning("metrics: could not read the company registrations", exc_info=True)
                return
            companies = GaugeMetricFamily(
                PREFIX + "companies", "Companies that activated the extension, by state.", labels=["state"]
            )
            for state, count in states.items():
                companies.add_metric([state], count)
            yield companies


def render(scrape_time: ScrapeTimeGauges) -> bytes:
    """Return every metric in Prometheus' text format, added up across processes under gunicorn."""
    registry = CollectorRegistry(support_collectors_without_names=True)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # A fresh registry per scrape: the files of every worker, dead ones included, are read anew.
        MultiProcessCollector(registry)
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(scrape_time)
    return generate_latest(registry)


class _Forward:
    """Show another registry's metrics through this one."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        """Yield the source registry's metrics."""
        yield from self._source.collect()
