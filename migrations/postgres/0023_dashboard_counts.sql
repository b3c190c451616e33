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
-- Backend differences: `hour` is timestamptz here, INTEGER µs on SQLite;
-- ids are COLLATE "C" here. PostgreSQL spreads each count over 8 `slot`s
-- (by transaction id, as event_totals does) so concurrent writers rarely
-- wait on one row, and its triggers on links and segment_transitions are per
-- statement (one grouped upsert for a batch); SQLite's are per row, slot 0.

CREATE TABLE dashboard_counts (
    metric  TEXT COLLATE "C" NOT NULL,
    hour    TIMESTAMPTZ NOT NULL,
    key     TEXT COLLATE "C" NOT NULL DEFAULT '',
    slot    SMALLINT NOT NULL DEFAULT 0,
    n       BIGINT NOT NULL,
    PRIMARY KEY (metric, hour, key, slot)
);

CREATE FUNCTION dashboard_hour(at timestamptz) RETURNS timestamptz LANGUAGE sql IMMUTABLE AS $$
    SELECT to_timestamp(floor(extract(epoch FROM at) / 3600) * 3600)
$$;

CREATE FUNCTION dashboard_add(at timestamptz, m text, k text, d bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF d <> 0 THEN
        INSERT INTO dashboard_counts (metric, hour, key, slot, n)
        VALUES (m, dashboard_hour(at), k, (txid_current() % 8)::smallint, d)
        ON CONFLICT (metric, hour, key, slot) DO UPDATE SET n = dashboard_counts.n + excluded.n;
    END IF;
END
$$;

-- Friendships: one row per LINE user, written one at a time by the webhook.
CREATE FUNCTION friendships_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    linked int := (SELECT COUNT(*) FROM links WHERE line_user_id = NEW.line_user_id)::int;
    seen int := CASE WHEN TG_OP = 'UPDATE' THEN 1 ELSE 0 END;
    was int := CASE WHEN TG_OP = 'UPDATE' AND OLD.following THEN 1 ELSE 0 END;
    now_following int := CASE WHEN NEW.following THEN 1 ELSE 0 END;
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.following = NEW.following THEN
        RETURN NULL;
    END IF;
    PERFORM dashboard_add(NEW.changed_at, 'friends', '', now_following - CASE WHEN seen = 1 THEN was ELSE linked END);
    PERFORM dashboard_add(NEW.changed_at, 'blocked', '', (1 - now_following) - (seen - was));
    PERFORM dashboard_add(NEW.changed_at, 'linked_friends', '',
        linked * (now_following - CASE WHEN seen = 1 THEN was ELSE 1 END));
    PERFORM dashboard_add(NEW.changed_at, 'follow', '', now_following);
    PERFORM dashboard_add(NEW.changed_at, 'unfollow', '', 1 - now_following);
    RETURN NULL;
END
$$;
CREATE TRIGGER friendships_count AFTER INSERT OR UPDATE ON friendships
    FOR EACH ROW EXECUTE FUNCTION friendships_count();

-- Links: imports add a million in a few statements, so per statement.
CREATE FUNCTION links_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Links grouped first (an import adds a million in one statement), then
    -- each group spread over the metrics it moves.
    INSERT INTO dashboard_counts (metric, hour, key, slot, n)
    SELECT c.metric, g.hour, c.key, (txid_current() % 8)::smallint, SUM(c.n * g.links)
    FROM (
        SELECT dashboard_hour(CASE WHEN TG_OP = 'INSERT' THEN l.linked_at ELSE now() END) AS hour, l.method,
               f.line_user_id IS NULL AS unknown, COALESCE(f.following, false) AS following,
               COUNT(*) * CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE -1 END AS links
        FROM changed l LEFT JOIN friendships f ON f.line_user_id = l.line_user_id
        GROUP BY 1, 2, 3, 4
    ) g
    CROSS JOIN LATERAL (VALUES
        (CASE WHEN TG_OP = 'INSERT' THEN 'link' ELSE 'unlink' END, g.method,
         CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE -1 END),
        ('linked', '', 1),
        ('friends', '', CASE WHEN g.unknown THEN 1 ELSE 0 END),
        ('linked_friends', '', CASE WHEN g.unknown OR g.following THEN 1 ELSE 0 END)
    ) AS c (metric, key, n)
    WHERE c.n <> 0
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (metric, hour, key, slot) DO UPDATE SET n = dashboard_counts.n + excluded.n;
    RETURN NULL;
END
$$;
CREATE TRIGGER links_added_count AFTER INSERT ON links
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION links_count();
CREATE TRIGGER links_removed_count AFTER DELETE ON links
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION links_count();

CREATE FUNCTION link_nonces_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM dashboard_add(NEW.created_at, 'nonce', '', 1);
        IF NEW.result IS NOT NULL THEN
            PERFORM dashboard_add(COALESCE(NEW.used_at, NEW.created_at), 'attempt', NEW.result, 1);
        END IF;
    ELSIF OLD.result IS DISTINCT FROM NEW.result THEN
        IF OLD.result IS NOT NULL THEN
            PERFORM dashboard_add(COALESCE(OLD.used_at, OLD.created_at), 'attempt', OLD.result, -1);
        END IF;
        IF NEW.result IS NOT NULL THEN
            PERFORM dashboard_add(COALESCE(NEW.used_at, NEW.created_at), 'attempt', NEW.result, 1);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER link_nonces_count AFTER INSERT OR UPDATE ON link_nonces
    FOR EACH ROW EXECUTE FUNCTION link_nonces_count();

CREATE FUNCTION segment_transitions_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dashboard_counts (metric, hour, key, slot, n)
    SELECT kind, dashboard_hour(at), segment_id, (txid_current() % 8)::smallint, COUNT(*)
    FROM added GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (metric, hour, key, slot) DO UPDATE SET n = dashboard_counts.n + excluded.n;
    RETURN NULL;
END
$$;
CREATE TRIGGER segment_transitions_count AFTER INSERT ON segment_transitions
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION segment_transitions_count();

-- A request LINE accepted: its deliveries, per campaign (one, in practice).
CREATE FUNCTION send_requests_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dashboard_counts (metric, hour, key, slot, n)
    SELECT 'sent', dashboard_hour(NEW.sent_at), campaign_id, (txid_current() % 8)::smallint, COUNT(*)
    FROM delivery_sends WHERE request_id = NEW.id GROUP BY campaign_id ORDER BY campaign_id
    ON CONFLICT (metric, hour, key, slot) DO UPDATE SET n = dashboard_counts.n + excluded.n;
    RETURN NULL;
END
$$;
CREATE TRIGGER send_requests_count AFTER UPDATE OF status ON send_requests
    FOR EACH ROW WHEN (NEW.status = 'sent' AND OLD.status <> 'sent' AND NEW.sent_at IS NOT NULL)
    EXECUTE FUNCTION send_requests_count();

INSERT INTO dashboard_counts (metric, hour, key, n)
SELECT kind, dashboard_hour(at), segment_id, COUNT(*) FROM segment_transitions GROUP BY 1, 2, 3;
INSERT INTO dashboard_counts (metric, hour, key, n)
SELECT 'sent', dashboard_hour(r.sent_at), s.campaign_id, COUNT(*)
FROM send_requests r JOIN delivery_sends s ON s.request_id = r.id
WHERE r.status = 'sent' AND r.sent_at IS NOT NULL GROUP BY 2, 3;
INSERT INTO dashboard_counts (metric, hour, key, n)
SELECT 'nonce', dashboard_hour(created_at), '', COUNT(*) FROM link_nonces GROUP BY 2;
INSERT INTO dashboard_counts (metric, hour, key, n)
SELECT 'attempt', dashboard_hour(COALESCE(used_at, created_at)), result, COUNT(*)
FROM link_nonces WHERE result IS NOT NULL GROUP BY 2, 3;
INSERT INTO dashboard_counts (metric, hour, key, n)
SELECT 'link', dashboard_hour(linked_at), method, COUNT(*) FROM links GROUP BY 2, 3;
-- The levels now (the overview's counts, as the planner judges friends).
INSERT INTO dashboard_counts (metric, hour, key, n)
SELECT metric, dashboard_hour(now()), '', n FROM (
    SELECT 'friends' AS metric,
           (SELECT COUNT(*) FROM friendships WHERE following)
           + (SELECT COUNT(*) FROM links l WHERE NOT EXISTS (SELECT 1 FROM friendships f WHERE f.line_user_id = l.line_user_id))
           AS n
    UNION ALL SELECT 'blocked', (SELECT COUNT(*) FROM friendships WHERE NOT following)
    UNION ALL SELECT 'linked', (SELECT COUNT(*) FROM links)
    UNION ALL SELECT 'linked_friends',
           (SELECT COUNT(*) FROM links l LEFT JOIN friendships f ON f.line_user_id = l.line_user_id
            WHERE f.line_user_id IS NULL OR f.following)
) levels WHERE n <> 0;

-- A campaign's clicks (its page and GET /v1/campaigns/{id}/stats count the
-- `link_click` events whose campaign_id is the campaign's): one range of the
-- link clicks, not a scan of the events. Only link clicks are in it.
CREATE INDEX events_link_click ON events ((properties ->> 'campaign_id')) WHERE type = 'link_click';
