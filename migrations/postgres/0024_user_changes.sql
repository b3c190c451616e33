-- The change feed: every write that can change a user's segments (events,
-- members, links, follows; from any instance's API or webhook, `renkei
-- import` or any other process) adds a row here in its own transaction, with
-- the users it touched. Evaluators claim rows (a lease: `claimed_by`,
-- `claimed_until`), re-evaluate their users and delete them, so a change is
-- never lost with a crashed process and several evaluators share the work.
-- A statement trigger notifies channel `renkei_user_changes` so evaluators
-- of other processes wake at once; they also poll, which covers a missed
-- notification.
-- Backend differences: timestamptz and BIGSERIAL here, INTEGER microseconds
-- and AUTOINCREMENT ids on SQLite, where nothing notifies (evaluators poll).
-- The start-up recompute now runs only when the segments' fingerprint
-- changed; before this table nothing recorded changes a crash lost, so the
-- mark is cleared and the first start after this migration recomputes.
CREATE TABLE user_changes (
    id             BIGSERIAL PRIMARY KEY,
    users          TEXT NOT NULL,
    cause          TEXT NOT NULL,
    changed_at     timestamptz NOT NULL,
    claimed_by     TEXT,
    claimed_until  timestamptz
);

CREATE FUNCTION renkei_notify_user_changes() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('renkei_user_changes', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER user_changes_notify AFTER INSERT ON user_changes
    FOR EACH STATEMENT EXECUTE FUNCTION renkei_notify_user_changes();

DELETE FROM marks WHERE name = 'segments_recomputed';
