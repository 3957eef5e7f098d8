"""/metrics under a real gunicorn with two workers: every scrape shows the sum of both processes."""

from __future__ import annotations

import os
import re
import signal
import threading

import requests

from devtools.processes import wait_for

COMPANY = "demo"
STORED = re.compile(r'^rehive_ext_webhook_deliveries_total\{outcome="stored"\} (\S+)$', re.MULTILINE)
DONE = re.compile(r'^rehive_ext_webhook_events_finished_total\{event="other",outcome="done"\} (\S+)$', re.M)
SERVED_BY = re.compile(r'"POST /webhooks/ HTTP/1.1" 202 .* pid=<(\d+)> rid=(\S+)')


def _value(pattern: re.Pattern, text: str) -> float:
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


def _scrape(url: str) -> str:
    # A new connection each time, so that scrapes land on either worker.
    response = requests.get(url + "/metrics", headers={"Connection": "close"}, timeout=10)
    assert response.status_code == 200
    return response.text


def _deliver(url: str, secret: str, ids: list[str]) -> None:
    for event_id in ids:
        response = requests.post(
            url + "/webhooks/",
            json={"id": event_id, "event": "test.metrics", "company": COMPANY, "data": {}},
            headers={"Authorization": f"Secret {secret}", "Connection": "close", "X-Request-ID": event_id},
            timeout=10,
        )
        assert response.status_code == 202, response.text


def test_counts_add_up_across_two_workers_and_survive_a_dead_worker(start, webhook_secret):
    service = start(register=False, workers=2, threads=4, REHIVE_COMPANY=COMPANY)
    sent: list[str] = []

    def served_by() -> dict[str, int]:
        return {rid: int(pid) for pid, rid in SERVED_BY.findall(service.log())}

    def send_batch() -> bool:
        batch = [f"m-{len(sent) + n}" for n in range(16)]
        threads = [
            threading.Thread(target=_deliver, args=(service.url, webhook_secret, batch[n::4]))
            for n in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sent.extend(batch)
        return (
            len(set(wait_for(lambda: served_by() if len(served_by()) >= len(sent) else None).values())) >= 2
        )

    # Concurrent connections spread over both workers; send more until the access log shows both served.
    wait_for(send_batch, timeout=60, interval=0, what="both workers to store deliveries")
    pids = set(served_by().values())
    assert served_by().keys() == set(sent), "the access log carries each request's X-Request-ID"

    for _ in range(6):  # whichever worker answers, it reports both workers' deliveries
        assert _value(STORED, _scrape(service.url)) == len(sent)
    wait_for(lambda: _value(DONE, _scrape(service.url)) == len(sent), what="every event done and counted")

    # A worker dies; its counts stay counted (its files remain), and the new worker adds to them.
    os.kill(min(pids), signal.SIGKILL)
    _deliver(service.url, webhook_secret, ["after-the-crash"])
    assert _value(STORED, _scrape(service.url)) == len(sent) + 1
    text = _scrape(service.url)
    assert 'rehive_ext_webhook_inbox_events{state="done"}' in text
    assert webhook_secret not in text
