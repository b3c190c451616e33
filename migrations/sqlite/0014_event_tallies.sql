-- Running tallies of the events a segment condition with no window selects
-- (its `where` filters, its aggregated property): per source of events (the
-- event's line_user_id and member_id as stored, '' for none) and tally key,
-- how many events, how many carry the property as a number, their sum, min
-- and max, and the latest occurred_at. Keys and what they count come from
-- the segments (renkei-segments' `tally` module); renkei adds each inserted
-- batch's tallies in the insert's transaction, and builds a key's rows from
-- the events when it first sees the key (`event_tally_keys`) or rebuilds
-- them all before the start-up recompute. Plain counts stay in
-- `event_totals` (0010). As there, events stored ahead of their time are
-- left out (read raw).
--
-- Backend differences: timestamps are INTEGER µs here and timestamptz on
-- PostgreSQL, whose rows are also split over 8 `slot`s.
CREATE TABLE event_tallies (
    line_user_id  TEXT NOT NULL,
    member_id     TEXT NOT NULL,
    key           TEXT NOT NULL,
    count         INTEGER NOT NULL,
    numbers       INTEGER NOT NULL,
    sum           REAL NOT NULL,
    min           REAL,
    max           REAL,
    last_at       INTEGER NOT NULL,
    PRIMARY KEY (line_user_id, member_id, key)
) WITHOUT ROWID;
CREATE INDEX event_tallies_member ON event_tallies (member_id, line_user_id, key) WHERE member_id <> '';

-- The keys whose rows are built, with their event type.
CREATE TABLE event_tally_keys (
    key         TEXT PRIMARY KEY,
    event_type  TEXT NOT NULL,
    built_at    INTEGER NOT NULL
) WITHOUT ROWID;
