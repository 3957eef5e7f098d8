"""How `make run` serves the app: threaded workers, since each request mostly waits on Rehive."""

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import gunicorn.util

bind = os.environ.get("BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# Rehive cuts webhook deliveries off at 5 s; nothing of ours should take longer than a Rehive call.
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = "-"
# Never log request headers: Authorization carries user tokens and the webhook secret.
# The request id is the one the app answered with in X-Request-ID (see logs.py).
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms pid=%(p)s rid=%({x-request-id}o)s'
control_socket_disable = True  # several servers (tests, benchmarks) may run at once
# Gunicorn trusts X-Forwarded-Proto (and friends) from 127.0.0.1 by default, and from a unix socket
# always: TRUSTED_PROXIES (werkzeug's ProxyFix in app.py) alone decides which forwarded headers count.
forwarded_allow_ips = ""
secure_scheme_headers: dict[str, str] = {}
forwarder_headers = ""


# Requests gunicorn cannot parse (a bad request line, header or length) are answered by gunicorn
# itself, before the app: an HTML page that quotes the offending line, and a warning that logs it.
# That line may hold a user's token or the webhook secret, and every error must be JSON: answer in
# the service's envelope and log only the kind of error, never what was sent.
def _json_error(sock, status_int, reason, mesg):  # same signature as gunicorn.util.write_error
    body = json.dumps({"status": "error", "message": f"{reason}."}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


class _WithoutWhatWasSent(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Invalid request from ip="):
            record.msg, record.args = message.split("'", 1)[0].rstrip(": "), ()
        return True


gunicorn.util.write_error = _json_error
logging.getLogger("gunicorn.error").addFilter(_WithoutWhatWasSent())


# Metrics: prometheus_client adds up the workers' values through files in PROMETHEUS_MULTIPROC_DIR,
# which must be set before any worker imports it (so here, in the master, before the fork) and must
# start empty, or counters of an earlier run would be added in. Without the variable each start gets
# its own fresh folder, so several servers (tests, benchmarks) never share one.
_created_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _created_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="rehive-ext-metrics-")


def on_starting(server):
    """Delete an earlier run's metric files before the first worker starts."""
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    # Only prometheus_client's own files (`counter_<pid>.db`, ...): an operator may point the variable
    # at a folder that holds something else, which a start must never delete.
    for path in folder.glob("*.db"):
        if path.is_file():
            path.unlink()


def child_exit(server, worker):
    """Let a dead worker's live gauges go; its counters stay counted."""
    from prometheus_client import multiprocess  # imported here, once the folder is set

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics folder this configuration made."""
    if _created_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
