-- Each campaign's deliveries by state, kept as they move (see the
-- PostgreSQL migration for the counters and who writes them). SQLite has
-- one writer: one slot (0), and the request trigger beside 0023's.

CREATE TABLE campaign_counts (
    campaign_id  TEXT NOT NULL,
    status       TEXT NOT NULL,
    skip_reason  TEXT NOT NULL DEFAULT '',
    slot         INTEGER NOT NULL DEFAULT 0,
    n            INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, status, skip_reason, slot)
) WITHOUT ROWID;

-- A request's status changed: its deliveries leave the old terminal state for the new one.
CREATE TRIGGER send_requests_campaign_count AFTER UPDATE OF status ON send_requests
    WHEN OLD.status IS NOT NEW.status
BEGIN
    INSERT INTO campaign_counts (campaign_id, status, skip_reason, slot, n)
    SELECT s.campaign_id, m.status, '', 0, m.sign * COUNT(*)
    FROM delivery_sends s, (SELECT OLD.status AS status, -1 AS sign UNION ALL SELECT NEW.status, 1) m
    WHERE s.request_id = NEW.id AND m.status IN ('sent', 'failed')
    GROUP BY s.campaign_id, m.status, m.sign
    ON CONFLICT (campaign_id, status, skip_reason, slot) DO UPDATE SET n = n + excluded.n;
END;

INSERT INTO campaign_counts (campaign_id, status, n)
SELECT campaign_id, 'created', COUNT(*) FROM deliveries WHERE true GROUP BY 1;
INSERT INTO campaign_counts (campaign_id, status, skip_reason, n)
SELECT campaign_id, 'skipped', COALESCE(skip_reason, ''), COUNT(*) FROM deliveries WHERE status = 'skipped' GROUP BY 1, 3;
INSERT INTO campaign_counts (campaign_id, status, n)
SELECT s.campaign_id, r.status, COUNT(*) FROM delivery_sends s JOIN send_requests r ON r.id = s.request_id
WHERE r.status IN ('sent', 'failed') GROUP BY 1, 2;
INSERT INTO campaign_counts (campaign_id, status, n)
SELECT campaign_id, 'requested', COUNT(*) FROM delivery_sends WHERE true GROUP BY 1;

-- What a deferred delivery waits for (`quiet_hours`, `quota`; NULL: its own
-- due time), so the dashboard's deliveries page can say why it waits.
ALTER TABLE delivery_queue ADD COLUMN waits_for TEXT;
