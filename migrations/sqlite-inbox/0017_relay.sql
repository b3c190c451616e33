-- The webhook relay's durable queue, in the inbox database (written through
-- the inbox's own writer, in the transaction that stores the webhook's
-- events, so LINE's 200 never waits for the main writer).
-- relay_bodies: each relayed webhook body, byte for byte, with LINE's
-- x-line-signature; relay_deliveries: one row per (target, body) until the
-- target has it (then deleted, and the body with its last row), or dead-
-- lettered (dead_at set, kept for inspection); leases: who delivers to a
-- target now (`relay:<target>`), the same table as the main database's 0013.
-- Differences from PostgreSQL's 0017: timestamps are INTEGER microseconds,
-- the body a BLOB; PostgreSQL's `leases` is 0013's, in its one database.
CREATE TABLE relay_bodies (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    body         BLOB NOT NULL,
    signature    TEXT NOT NULL,
    received_at  INTEGER NOT NULL
);
CREATE TABLE relay_deliveries (
    target           TEXT NOT NULL,
    body_id          INTEGER NOT NULL REFERENCES relay_bodies (id),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    dead_at          INTEGER,
    last_error       TEXT,
    PRIMARY KEY (target, body_id)
);
CREATE INDEX relay_deliveries_pending ON relay_deliveries (target, body_id) WHERE dead_at IS NULL;
CREATE INDEX relay_deliveries_body ON relay_deliveries (body_id);
CREATE TABLE leases (
    name         TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    acquired_at  INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
