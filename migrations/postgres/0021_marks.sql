-- Marks of singleton work done: `name` → `value` at `at`. The start-up
-- recompute writes `segments_recomputed` = the fingerprint of the segment
-- rules and timezone it recomputed with, so instances that start together
-- recompute once (the others wait for the mark under lease
-- `segment_recompute`).
-- Backend differences: `at` is timestamptz here and INTEGER microseconds on
-- SQLite.
CREATE TABLE marks (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL,
    at     timestamptz NOT NULL
);
