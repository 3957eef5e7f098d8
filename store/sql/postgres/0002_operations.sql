-- What operating the inbox needs: a cheap "oldest unfinished" for metrics, retention by age, a row
-- /readyz can write, and periodic jobs that one process at a time runs.
CREATE INDEX webhook_events_unfinished ON webhook_events (received_at)
    WHERE status IN ('received', 'processing', 'failed');
CREATE INDEX webhook_events_done_at ON webhook_events (done_at) WHERE status = 'done';
CREATE TABLE store_health (
    id         integer PRIMARY KEY CHECK (id = 1),
    checked_at double precision NOT NULL
);
CREATE TABLE periodic_runs (
    name        text PRIMARY KEY,
    last_run_at double precision NOT NULL
);
