-- SQLite only: the webhook inbox in a database file of its own beside the
-- main one (`renkei.db` -> `renkei-webhook.db`), with its own writer, so
-- storing a LINE webhook never waits for the main database's writer (an
-- import, a recompute). The same columns as `webhook_events` in the main
-- database (0001, 0003), whose rows the store moves here once, keeping their
-- ids (link_nonces.consumed_by names them). PostgreSQL keeps the table in its
-- one database and gives the inbox its own connections instead.
CREATE TABLE webhook_events (
    id                INTEGER PRIMARY KEY,
    webhook_event_id  TEXT UNIQUE,
    type              TEXT NOT NULL,
    body              TEXT NOT NULL,
    received_at       INTEGER NOT NULL,
    processed_at      INTEGER,
    claimed_until     INTEGER,
    attempts          INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT
);
CREATE INDEX webhook_events_pending ON webhook_events (id) WHERE processed_at IS NULL;
