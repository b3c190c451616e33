-- `POST /v1/events` appends to a lean inbox and replies once the rows are
-- durable; a merger moves them into `events` behind the reply (with the
-- totals, tallies and change feed, in one transaction per merge). Inserting
-- into `events` itself costs its indexes (the covering ones hold the
-- properties) and the totals trigger: that set the API's ceiling at ~0.8 of
-- a raw COPY into `events`. The inbox has no index at all; its properties are
-- the JSON text the API already validated, so PostgreSQL does not parse them
-- twice.
--
-- `event_keys` holds the `event_id` of every event appended here, so that an
-- append can say which events repeat a known one (the reply's `duplicates`)
-- before they reach `events`: a key is kept if it is neither here nor in
-- `events`. Events stored directly (imports, the webhook, tracked links) are
-- checked against `events` only, so an import racing an append of the same
-- `event_id` may both count it as accepted; the merge then stores it once.
--
-- Several mergers (one per instance with the api role) take rows with
-- `FOR UPDATE SKIP LOCKED`, so an instance's leftovers are merged by another.
-- Rows are deleted as they are merged: autovacuum is told to clean the
-- inbox after every 10,000 dead rows, whatever its size.
--
-- PostgreSQL only: on SQLite the API inserts into `events` directly (one
-- writer; an inbox would only add a second write).
CREATE TABLE event_inbox (
    event_id      TEXT,
    type          TEXT NOT NULL,
    member_id     TEXT COLLATE "C",
    line_user_id  TEXT COLLATE "C",
    occurred_at   TIMESTAMPTZ NOT NULL,
    properties    TEXT NOT NULL,
    received_at   TIMESTAMPTZ NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000);

CREATE TABLE event_keys (
    event_id  TEXT PRIMARY KEY
);
