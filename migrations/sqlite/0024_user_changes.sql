-- The change feed: every write that can change a user's segments (events,
-- members, links, follows; from the API, the webhook, `renkei import` or any
-- other process) adds a row here in its own transaction, with the users it
-- touched. Evaluators claim rows (a lease: `claimed_by`, `claimed_until`),
-- re-evaluate their users and delete them, so a change is never lost with a
-- crashed process.
-- Backend differences: INTEGER microseconds and AUTOINCREMENT ids (never
-- reused, so "every change up to id N" stays meaningful) here, timestamptz
-- and BIGSERIAL on PostgreSQL, where a trigger also notifies evaluators;
-- here they poll.
-- The start-up recompute now runs only when the segments' fingerprint
-- changed; before this table nothing recorded changes a crash lost, so the
-- mark is cleared and the first start after this migration recomputes.
CREATE TABLE user_changes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    users          TEXT NOT NULL,
    cause          TEXT NOT NULL,
    changed_at     INTEGER NOT NULL,
    claimed_by     TEXT,
    claimed_until  INTEGER
);

DELETE FROM marks WHERE name = 'segments_recomputed';
