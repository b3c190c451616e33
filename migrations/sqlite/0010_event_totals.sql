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
-- so it fires no trigger and changes nothing.
--
-- Backend differences: SQLite keeps the totals with a row trigger (one upsert
-- per event), PostgreSQL with a statement trigger over the inserted rows
-- (one grouped upsert per batch); timestamps are INTEGER µs here.
CREATE TABLE event_totals (
    line_user_id  TEXT NOT NULL,
    member_id     TEXT NOT NULL,
    type          TEXT NOT NULL,
    count         INTEGER NOT NULL,
    last_at       INTEGER NOT NULL,
    PRIMARY KEY (line_user_id, member_id, type)
) WITHOUT ROWID;
CREATE INDEX event_totals_member ON event_totals (member_id, line_user_id, type) WHERE member_id <> '';

INSERT INTO event_totals (line_user_id, member_id, type, count, last_at)
SELECT COALESCE(line_user_id, ''), COALESCE(member_id, ''), type, COUNT(*), MAX(occurred_at)
FROM events WHERE occurred_at <= received_at
GROUP BY COALESCE(line_user_id, ''), COALESCE(member_id, ''), type;

CREATE TRIGGER events_add_to_totals AFTER INSERT ON events WHEN NEW.occurred_at <= NEW.received_at
BEGIN
    INSERT INTO event_totals (line_user_id, member_id, type, count, last_at)
    VALUES (COALESCE(NEW.line_user_id, ''), COALESCE(NEW.member_id, ''), NEW.type, 1, NEW.occurred_at)
    ON CONFLICT (line_user_id, member_id, type)
    DO UPDATE SET count = count + 1, last_at = MAX(last_at, excluded.last_at);
END;

CREATE INDEX events_line_user_pending ON events (line_user_id, type)
    WHERE line_user_id IS NOT NULL AND occurred_at > received_at;
CREATE INDEX events_member_pending ON events (member_id, type)
    WHERE member_id IS NOT NULL AND occurred_at > received_at;

DROP INDEX events_member;
DROP INDEX events_line_user;
CREATE INDEX events_member_typed ON events (member_id, type, occurred_at) WHERE member_id IS NOT NULL;
CREATE INDEX events_line_user_typed ON events (line_user_id, type, occurred_at) WHERE line_user_id IS NOT NULL;
