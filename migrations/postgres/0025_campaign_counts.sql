-- Each campaign's deliveries by state, kept by triggers so its page and
-- `GET /v1/campaigns/{id}/stats` read a few rows instead of counting a
-- million deliveries. A delivery's state is its request's once it is in
-- one (pending → requested, then sent or failed), else its own status
-- (pending, skipped with a reason): the outbox's `delivery_status`.
--   deliveries inserted          +1 at (status, reason)
--   deliveries updated           −1 at the old (status, reason), +1 at the new
--   delivery_sends inserted      −1 at the delivery's own (status, reason),
--                                +1 at its request's state
--   send_requests status change  the request's deliveries move from the old
--                                state to the new
-- Spread over 8 `slot`s by transaction id (as event_totals), upserts in
-- key order; the triggers are per statement (one grouped upsert a batch)
-- but for send_requests, updated one row at a time.

CREATE TABLE campaign_counts (
    campaign_id  TEXT COLLATE "C" NOT NULL,
    status       TEXT COLLATE "C" NOT NULL,
    skip_reason  TEXT COLLATE "C" NOT NULL DEFAULT '',
    slot         SMALLINT NOT NULL DEFAULT 0,
    n            BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, status, skip_reason, slot)
);

CREATE FUNCTION request_state(status text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN status = 'pending' THEN 'requested' ELSE status END
$$;

CREATE FUNCTION deliveries_added_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO campaign_counts (campaign_id, status, skip_reason, slot, n)
    SELECT campaign_id, status, COALESCE(skip_reason, ''), (txid_current() % 8)::smallint, COUNT(*)
    FROM added GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (campaign_id, status, skip_reason, slot) DO UPDATE SET n = campaign_counts.n + excluded.n;
    RETURN NULL;
END
$$;
CREATE TRIGGER deliveries_added_count AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION deliveries_added_count();

CREATE FUNCTION deliveries_changed_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO campaign_counts (campaign_id, status, skip_reason, slot, n)
    SELECT campaign_id, status, reason, (txid_current() % 8)::smallint, SUM(n)
    FROM (
        SELECT campaign_id, status, COALESCE(skip_reason, '') AS reason, -1 AS n FROM before
        UNION ALL SELECT campaign_id, status, COALESCE(skip_reason, ''), 1 FROM after
    ) c
    GROUP BY 1, 2, 3 HAVING SUM(n) <> 0 ORDER BY 1, 2, 3
    ON CONFLICT (campaign_id, status, skip_reason, slot) DO UPDATE SET n = campaign_counts.n + excluded.n;
    RETURN NULL;
END
$$;
CREATE TRIGGER deliveries_changed_count AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS before NEW TABLE AS after FOR EACH STATEMENT EXECUTE FUNCTION deliveries_changed_count();

CREATE FUNCTION delivery_sends_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO campaign_counts (campaign_id, status, skip_reason, slot, n)
    SELECT campaign_id, status, reason, (txid_current() % 8)::smallint, SUM(n)
    FROM (
        SELECT d.campaign_id, d.status, COALESCE(d.skip_reason, '') AS reason, -1 AS n
        FROM added s JOIN deliveries d ON d.id = s.delivery_id
        UNION ALL
        SELECT s.campaign_id, request_state(r.status), '', 1
        FROM added s JOIN send_requests r ON r.id = s.request_id
    ) c
    GROUP BY 1, 2, 3 HAVING SUM(n) <> 0 ORDER BY 1, 2, 3
    ON CONFLICT (campaign_id, status, skip_reason, slot) DO UPDATE SET n = campaign_counts.n + excluded.n;
    RETURN NULL;
END
$$;
CREATE TRIGGER delivery_sends_count AFTER INSERT ON delivery_sends
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION delivery_sends_count();

CREATE FUNCTION send_requests_state_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO campaign_counts (campaign_id, status, skip_reason, slot, n)
    SELECT s.campaign_id, c.status, '', (txid_current() % 8)::smallint, SUM(c.n)
    FROM delivery_sends s
    CROSS JOIN LATERAL (VALUES (request_state(OLD.status), -1), (request_state(NEW.status), 1)) AS c (status, n)
    WHERE s.request_id = NEW.id
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (campaign_id, status, skip_reason, slot) DO UPDATE SET n = campaign_counts.n + excluded.n;
    RETURN NULL;
END
$$;
CREATE TRIGGER send_requests_state_count AFTER UPDATE OF status ON send_requests
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION send_requests_state_count();

INSERT INTO campaign_counts (campaign_id, status, skip_reason, n)
SELECT d.campaign_id,
       CASE WHEN s.request_id IS NULL THEN d.status ELSE request_state(r.status) END,
       COALESCE(d.skip_reason, ''), COUNT(*)
FROM deliveries d LEFT JOIN delivery_sends s ON s.delivery_id = d.id LEFT JOIN send_requests r ON r.id = s.request_id
GROUP BY 1, 2, 3;
