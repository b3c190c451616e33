-- The dashboard's series over time: `dashboard_counts` holds, per UTC hour,
-- metric and key, the changes that triggers saw, so no page reads the
-- tables they come from (the dashboard sums hours into days of its own
-- timezone, and walks levels back from today's counts):
--   friends, blocked, linked, linked_friends (key '')  level changes of the
--       overview's counts (friendships and links; a linked user never seen
--       to follow or unfollow counts as a friend, as the planner judges)
--   follow, unfollow (key '')           friendships turning following / blocked
--   link, unlink (key: method)          links made and removed (unlinks at
--       the deletion's time)
--   nonce (key '')                      account-link nonces issued
--   attempt (key: result)               account-link outcomes (ok, failed,
--       conflict, ...), at their use (a result changed later moves)
--   entered, exited (key: segment)      segment transitions
--   sent (key: campaign)                deliveries in send requests LINE accepted
-- Backfilled from what the tables still show: transitions, sent requests,
-- nonces and current links (their `link`), and the level metrics' counts
-- now, at this hour: so each level metric's sum over all hours is the
-- overview's count, read without counting the tables.
--
-- Backend differences: `hour` is INTEGER µs here, timestamptz on
-- PostgreSQL, which also spreads each count over 8 `slot`s and runs its
-- links and segment_transitions triggers per statement; here every trigger
-- is per row and `slot` is always 0 (one writer).

CREATE TABLE dashboard_counts (
    metric  TEXT NOT NULL,
    hour    INTEGER NOT NULL,
    key     TEXT NOT NULL DEFAULT '',
    slot    INTEGER NOT NULL DEFAULT 0,
    n       INTEGER NOT NULL,
    PRIMARY KEY (metric, hour, key, slot)
) WITHOUT ROWID;

CREATE TRIGGER friendships_added_count AFTER INSERT ON friendships
BEGIN
    INSERT INTO dashboard_counts (metric, hour, key, slot, n)
    SELECT metric, (NEW.changed_at / 3600000000) * 3600000000, '', 0, n FROM (
        SELECT 'friends' AS metric, NEW.following - l.linked AS n
            FROM (SELECT EXISTS (SELECT 1 FROM links WHERE line_user_id = NEW.line_user_id) AS linked) l
        UNION ALL SELECT 'blocked', 1 - NEW.following
        UNION ALL SELECT 'linked_friends', l.linked * (NEW.following - 1)
            FROM (SELECT EXISTS (SELECT 1 FROM links WHERE line_user_id = NEW.line_user_id) AS linked) l
        UNION ALL SELECT 'follow', NEW.following
        UNION ALL SELECT 'unfollow', 1 - NEW.following
    ) WHERE n <> 0
    ON CONFLICT (metric, hour, key, slot) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER friendships_changed_count AFTER UPDATE OF following ON friendships
    WHEN OLD.following <> NEW.following
BEGIN
    INSERT INTO dashboard_counts (metric, hour, key, slot, n)
    SELECT metric, (NEW.changed_at / 3600000000) * 3600000000, '', 0, n FROM (
        SELECT 'friends' AS metric, NEW.following - OLD.following AS n
        UNION ALL SELECT 'blocked', OLD.following - NEW.following
        UNION ALL SELECT 'linked_friends', l.linked * (NEW.following - OLD.following)
            FROM (SELECT EXISTS (SELECT 1 FROM links WHERE line_user_id = NEW.line_user_id) AS linked) l
        UNION ALL SELECT 'follow', NEW.following
        UNION ALL SELECT 'unfollow', 1 - NEW.following
    ) WHERE n <> 0
    ON CONFLICT (metric, hour, key, slot) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER links_added_count AFTER INSERT ON links
BEGIN
    INSERT INTO dashboard_counts (metric, hour, key, slot, n)
    SELECT metric, (NEW.linked_at / 3600000000) * 3600000000, key, 0, n FROM (
        SELECT 'link' AS metric, NEW.method AS key, 1 AS n
        UNION ALL SELECT 'linked', '', 1
        UNION ALL SELECT 'friends', '', NOT EXISTS (SELECT 1 FROM friendships WHERE line_user_id = NEW.line_user_id)
        UNION ALL SELECT 'linked_friends', '',
            NOT EXISTS (SELECT 1 FROM friendships WHERE line_user_id = NEW.line_user_id AND following = 0)
    ) WHERE n <> 0
    ON CONFLICT (metric, hour, key, slot) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER links_removed_count AFTER DELETE ON links
BEGIN
    INSERT INTO dashboard_counts (metric, hour, key, slot, n)
    SELECT metric, (CAST(strftime('%s', 'now') AS INTEGER) / 3600) * 3600000000, key, 0, n FROM (
        SELECT 'unlink' AS metric, OLD.method AS key, 1 AS n
        UNION ALL SELECT 'linked', '', -1
        UNION ALL SELECT 'friends', '', -(NOT EXISTS (SELECT 1 FROM friendships WHERE line_user_id = OLD.line_user_id))
        UNION ALL SELECT 'linked_friends', '',
            -(NOT EXISTS (SELECT 1 FROM friendships WHERE line_user_id = OLD.line_user_id AND following = 0))
    ) WHERE n <> 0
    ON CONFLICT (metric, hour, key, slot) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER link_nonces_added_count AFTER INSERT ON link_nonces
BEGIN
    INSERT INTO dashboard_counts (metric, hour, key, slot, n)
    SELECT metric, (at / 3600000000) * 3600000000, key, 0, 1 FROM (
        SELECT 'nonce' AS metric, NEW.created_at AS at, '' AS key
        UNION ALL SELECT 'attempt', COALESCE(NEW.used_at, NEW.created_at), NEW.result WHERE NEW.result IS NOT NULL
    ) WHERE true
    ON CONFLICT (metric, hour, key, slot) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER link_nonces_result_count AFTER UPDATE OF result ON link_nonces
    WHEN OLD.result IS NOT NEW.result
BEGIN
    INSERT INTO dashboard_counts (metric, hour, key, slot, n)
    SELECT 'attempt', (at / 3600000000) * 3600000000, key, 0, n FROM (
        SELECT COALESCE(OLD.used_at, OLD.created_at) AS at, OLD.result AS key, -1 AS n WHERE OLD.result IS NOT NULL
        UNION ALL SELECT COALESCE(NEW.used_at, NEW.created_at), NEW.result, 1 WHERE NEW.result IS NOT NULL
    ) WHERE true
    ON CONFLICT (metric, hour, key, slot) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER segment_transitions_count AFTER INSERT ON segment_transitions
BEGIN
    INSERT INTO dashboard_counts (metric, hour, key, slot, n)
    VALUES (NEW.kind, (NEW.at / 3600000000) * 3600000000, NEW.segment_id, 0, 1)
    ON CONFLICT (metric, hour, key, slot) DO UPDATE SET n = n + 1;
END;

-- A request LINE accepted: its deliveries, per campaign (one, in practice).
CREATE TRIGGER send_requests_count AFTER UPDATE OF status ON send_requests
    WHEN NEW.status = 'sent' AND OLD.status <> 'sent' AND NEW.sent_at IS NOT NULL
BEGIN
    INSERT INTO dashboard_counts (metric, hour, key, slot, n)
    SELECT 'sent', (NEW.sent_at / 3600000000) * 3600000000, campaign_id, 0, COUNT(*)
    FROM delivery_sends WHERE request_id = NEW.id GROUP BY campaign_id
    ON CONFLICT (metric, hour, key, slot) DO UPDATE SET n = n + excluded.n;
END;

INSERT INTO dashboard_counts (metric, hour, key, n)
SELECT kind, (at / 3600000000) * 3600000000, segment_id, COUNT(*) FROM segment_transitions WHERE true GROUP BY 1, 2, 3;
INSERT INTO dashboard_counts (metric, hour, key, n)
SELECT 'sent', (r.sent_at / 3600000000) * 3600000000, s.campaign_id, COUNT(*)
FROM send_requests r JOIN delivery_sends s ON s.request_id = r.id
WHERE r.status = 'sent' AND r.sent_at IS NOT NULL GROUP BY 2, 3;
INSERT INTO dashboard_counts (metric, hour, key, n)
SELECT 'nonce', (created_at / 3600000000) * 3600000000, '', COUNT(*) FROM link_nonces WHERE true GROUP BY 2;
INSERT INTO dashboard_counts (metric, hour, key, n)
SELECT 'attempt', (COALESCE(used_at, created_at) / 3600000000) * 3600000000, result, COUNT(*)
FROM link_nonces WHERE result IS NOT NULL GROUP BY 2, 3;
INSERT INTO dashboard_counts (metric, hour, key, n)
SELECT 'link', (linked_at / 3600000000) * 3600000000, method, COUNT(*) FROM links WHERE true GROUP BY 2, 3;
-- The levels now (the overview's counts, as the planner judges friends).
INSERT INTO dashboard_counts (metric, hour, key, n)
SELECT metric, (CAST(strftime('%s', 'now') AS INTEGER) / 3600) * 3600000000, '', n FROM (
    SELECT 'friends' AS metric,
           (SELECT COUNT(*) FROM friendships WHERE following = 1)
           + (SELECT COUNT(*) FROM links l WHERE NOT EXISTS (SELECT 1 FROM friendships f WHERE f.line_user_id = l.line_user_id))
           AS n
    UNION ALL SELECT 'blocked', (SELECT COUNT(*) FROM friendships WHERE following = 0)
    UNION ALL SELECT 'linked', (SELECT COUNT(*) FROM links)
    UNION ALL SELECT 'linked_friends',
           (SELECT COUNT(*) FROM links l LEFT JOIN friendships f ON f.line_user_id = l.line_user_id
            WHERE f.line_user_id IS NULL OR f.following = 1)
) WHERE n <> 0;

-- A campaign's clicks (its page and GET /v1/campaigns/{id}/stats count the
-- `link_click` events whose campaign_id is the campaign's): only the link
-- clicks are read, not every event. (PostgreSQL indexes the campaign_id
-- itself; here json_extract would fail a write of invalid JSON.)
CREATE INDEX events_link_click ON events (line_user_id) WHERE type = 'link_click';
