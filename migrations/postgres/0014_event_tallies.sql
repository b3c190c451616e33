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
-- left out (read raw), and each row is split over 8 `slot`s.
--
-- Backend differences: timestamps are timestamptz here and INTEGER µs on
-- SQLite; ids and keys are COLLATE "C"; SQLite has no slot.
CREATE TABLE event_tallies (
    line_user_id  TEXT COLLATE "C" NOT NULL,
    member_id     TEXT COLLATE "C" NOT NULL,
    key           TEXT COLLATE "C" NOT NULL,
    count         BIGINT NOT NULL,
    numbers       BIGINT NOT NULL,
    sum           DOUBLE PRECISION NOT NULL,
    min           DOUBLE PRECISION,
    max           DOUBLE PRECISION,
    last_at       TIMESTAMPTZ NOT NULL,
    slot          SMALLINT NOT NULL DEFAULT 0,
    PRIMARY KEY (line_user_id, member_id, key, slot)
);
CREATE INDEX event_tallies_member ON event_tallies (member_id, line_user_id, key) WHERE member_id <> '';

-- The keys whose rows are built, with their event type.
CREATE TABLE event_tally_keys (
    key         TEXT COLLATE "C" PRIMARY KEY,
    event_type  TEXT COLLATE "C" NOT NULL,
    built_at    TIMESTAMPTZ NOT NULL
);
