-- Each campaign's deliveries by state, kept as they move so that its page
-- and `GET /v1/campaigns/{id}/stats` read a few rows instead of counting a
-- million deliveries. Counters (`status`, with `skip_reason` for skips):
--   created    deliveries inserted             (the outbox's insert, in its statement)
--   requested  deliveries put into a request   (the planner's commit)
--   skipped    deliveries skipped, per reason  (the planner's commit)
--   sent       deliveries of requests now sent   } the trigger below, as a
--   failed     deliveries of requests now failed } request's status changes
-- The writers know how many rows of which campaign moved, so no statement
-- reads a delivery back to count it (triggers on `deliveries` and
-- `delivery_sends` did, and slowed enqueueing and planning by a quarter).
-- A delivery is pending until requested or skipped, so the reader derives
--   pending = created − requested − skipped,  in a request = requested − sent − failed.
-- Spread over 8 `slot`s by transaction id (as dashboard_counts), so
-- concurrent planners rarely wait on one row; upserts go in key order.

CREATE TABLE campaign_counts (
    campaign_id  TEXT COLLATE "C" NOT NULL,
    status       TEXT COLLATE "C" NOT NULL,
    skip_reason  TEXT COLLATE "C" NOT NULL DEFAULT '',
    slot         SMALLINT NOT NULL DEFAULT 0,
    n            BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, status, skip_reason, slot)
);

-- A request's status changed: its deliveries leave the old terminal state
-- (a failed request LINE accepted after all) for the new one. One read of
-- the request's `delivery_sends` feeds this and the dashboard's `sent`
-- hours (migration 0023's function, which this replaces).
CREATE OR REPLACE FUNCTION send_requests_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH c AS (
        SELECT campaign_id, COUNT(*) AS n FROM delivery_sends WHERE request_id = NEW.id GROUP BY campaign_id
    ), hours AS (
        INSERT INTO dashboard_counts (metric, hour, key, slot, n)
        SELECT 'sent', dashboard_hour(NEW.sent_at), campaign_id, (txid_current() % 8)::smallint, n
        FROM c WHERE NEW.status = 'sent' AND NEW.sent_at IS NOT NULL ORDER BY campaign_id
        ON CONFLICT (metric, hour, key, slot) DO UPDATE SET n = dashboard_counts.n + excluded.n
    )
    INSERT INTO campaign_counts (campaign_id, status, skip_reason, slot, n)
    SELECT c.campaign_id, m.status, '', (txid_current() % 8)::smallint, m.sign * c.n
    FROM c CROSS JOIN (VALUES (OLD.status, -1), (NEW.status, 1)) AS m (status, sign)
    WHERE m.status IN ('sent', 'failed') ORDER BY 1, 2
    ON CONFLICT (campaign_id, status, skip_reason, slot) DO UPDATE SET n = campaign_counts.n + excluded.n;
    RETURN NULL;
END
$$;
DROP TRIGGER send_requests_count ON send_requests;
CREATE TRIGGER send_requests_count AFTER UPDATE OF status ON send_requests
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION send_requests_count();

INSERT INTO campaign_counts (campaign_id, status, n)
SELECT campaign_id, 'created', COUNT(*) FROM deliveries GROUP BY 1;
INSERT INTO campaign_counts (campaign_id, status, skip_reason, n)
SELECT campaign_id, 'skipped', COALESCE(skip_reason, ''), COUNT(*) FROM deliveries WHERE status = 'skipped' GROUP BY 1, 3;
INSERT INTO campaign_counts (campaign_id, status, n)
SELECT s.campaign_id, r.status, COUNT(*) FROM delivery_sends s JOIN send_requests r ON r.id = s.request_id
WHERE r.status IN ('sent', 'failed') GROUP BY 1, 2;
INSERT INTO campaign_counts (campaign_id, status, n)
SELECT campaign_id, 'requested', COUNT(*) FROM delivery_sends GROUP BY 1;

-- What a deferred delivery waits for (`quiet_hours`, `quota`; NULL: its own
-- due time), so the dashboard's deliveries page can say why it waits.
ALTER TABLE delivery_queue ADD COLUMN waits_for TEXT;
