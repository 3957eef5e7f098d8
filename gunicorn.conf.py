"""How `make run` serves the app: threaded workers, since each request mostly waits on Rehive."""

import os

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
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
control_socket_disable = True  # several servers (tests, benchmarks) may run at once
