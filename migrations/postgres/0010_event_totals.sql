-- Re-evaluating a user after one event reads neither the user's whole
-- history nor, for windowed conditions, more than the window.
--
-- The events of a user are indexed by type and time, so that each type's
-- window is one index range; these replace 0001's indexes by time alone.
--
-- Running totals: per source of events (the event's
-- line_user_id and member_id as stored, '' for none) and type, how many
-- events there are and when the latest occurred. A user's totals are those
-- of its LINE user id plus those of its member's events that name another
-- (or no) LINE user id, as the segment engine reads raw events.
--
-- An event counts from the instant it occurred: one stored ahead of its time
-- (occurred_at after received_at) is left out and read raw, through the
-- small `*_pending` indexes. An event repeated by event_id is not inserted,
-- so it is not in the trigger's rows and changes nothing.
--
-- Backend differences: PostgreSQL keeps the totals with a statement trigger
-- over the inserted rows (one grouped upsert per batch, in key order so that
-- concurrent batches lock rows in the same order), SQLite with a row
-- trigger. On PostgreSQL each total is split over 8 `slot`s, picked by the
-- writing transaction's id, so that concurrent batches on the same users
-- mostly update different rows instead of queueing on one (a reader sums the
-- slots); SQLite has one writer and no slot. Ids and types compare under
-- COLLATE "C" like the other id columns (0009).
CREATE TABLE event_totals (
    line_user_id  TEXT COLLATE "C" NOT NULL,
    member_id     TEXT COLLATE "C" NOT NULL,
    type          TEXT COLLATE "C" NOT NULL,
    count         BIGINT NOT NULL,
    last_at       TIMESTAMPTZ NOT NULL,
    slot          SMALLINT NOT NULL DEFAULT 0,
    PRIMARY KEY (line_user_id, member_id, type, slot)
);
CREATE INDEX event_totals_member ON event_totals (member_id, line_user_id, type) WHERE member_id <> '';

INSERT INTO event_totals (line_user_id, member_id, type, count, last_at)
SELECT COALESCE(line_user_id, ''), COALESCE(member_id, ''), type, COUNT(*), MAX(occurred_at)
FROM events WHERE occurred_at <= received_at
GROUP BY 1, 2, 3;

CREATE FUNCTION events_add_to_totals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_totals (line_user_id, member_id, type, count, last_at, slot)
    SELECT COALESCE(line_user_id, ''), COALESCE(member_id, ''), type, COUNT(*), MAX(occurred_at),
           (txid_current() % 8)::smallint
    FROM added WHERE occurred_at <= received_at
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (line_user_id, member_id, type, slot)
    DO UPDATE SET count = event_totals.count + excluded.count,
                  last_at = GREATEST(event_totals.last_at, excluded.last_at);
    RETURN NULL;
END
$$;

CREATE TRIGGER events_add_to_totals AFTER INSERT ON events
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION events_add_to_totals();

CREATE INDEX events_line_user_pending ON events (line_user_id, type)
    WHERE line_user_id IS NOT NULL AND occurred_at > received_at;
CREATE INDEX events_member_pending ON events (member_id, type)
    WHERE member_id IS NOT NULL AND occurred_at > received_at;

DROP INDEX events_member;
DROP INDEX events_line_user;
CREATE INDEX events_member_typed ON events (member_id, type, occurred_at) WHERE member_id IS NOT NULL;
CREATE INDEX events_line_user_typed ON events (line_user_id, type, occurred_at) WHERE line_user_id IS NOT NULL;
