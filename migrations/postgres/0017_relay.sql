-- The webhook relay's durable queue, written through the inbox's own
-- connections in the transaction that stores the webhook's events.
-- relay_bodies: each relayed webhook body, byte for byte, with LINE's
-- x-line-signature; relay_deliveries: one row per (target, body) until the
-- target has it (then deleted, and the body with its last row), or dead-
-- lettered (dead_at set, kept for inspection). Who delivers to a target
-- now is a lease `relay:<target>` in 0013's `leases`.
-- Differences from SQLite's 0017 (in the inbox database, migrations/
-- sqlite-inbox): timestamptz and bytea here, `target` COLLATE "C"; SQLite's
-- inbox file has its own `leases` table.
CREATE TABLE relay_bodies (
    id           BIGSERIAL PRIMARY KEY,
    body         BYTEA NOT NULL,
    signature    TEXT NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL
);
CREATE TABLE relay_deliveries (
    target           TEXT NOT NULL COLLATE "C",
    body_id          BIGINT NOT NULL REFERENCES relay_bodies (id),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    dead_at          TIMESTAMPTZ,
    last_error       TEXT,
    PRIMARY KEY (target, body_id)
);
CREATE INDEX relay_deliveries_pending ON relay_deliveries (target, body_id) WHERE dead_at IS NULL;
CREATE INDEX relay_deliveries_body ON relay_deliveries (body_id);
