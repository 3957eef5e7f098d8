-- The inbox: each delivery stored once (UNIQUE (company, id) decides) and moved through its states.
-- Times are seconds since the epoch (double precision), as in the SQLite store, so both behave alike.
CREATE TABLE webhook_events (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company     text NOT NULL,
    id          text NOT NULL,
    event       text NOT NULL,
    body        text NOT NULL,
    status      text NOT NULL DEFAULT 'received'
                CHECK (status IN ('received', 'processing', 'done', 'failed', 'dead')),
    attempts    integer NOT NULL DEFAULT 0,
    due_at      double precision,
    lease_token text,
    last_error  text,
    traceback   text,
    received_at double precision NOT NULL,
    updated_at  double precision NOT NULL,
    done_at     double precision,
    UNIQUE (company, id)
);
CREATE INDEX webhook_events_due ON webhook_events (due_at, seq) WHERE due_at IS NOT NULL;
CREATE INDEX webhook_events_status ON webhook_events (status, seq);
-- A queue table is updated several times per row: vacuum it early so dead tuples do not pile up.
ALTER TABLE webhook_events SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
