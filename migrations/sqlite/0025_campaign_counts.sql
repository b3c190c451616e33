-- Each campaign's deliveries by state, kept by triggers (see the PostgreSQL
-- migration for what moves the counts). SQLite's triggers are per row and
-- use one slot (0).

CREATE TABLE campaign_counts (
    campaign_id  TEXT NOT NULL,
    status       TEXT NOT NULL,
    skip_reason  TEXT NOT NULL DEFAULT '',
    slot         INTEGER NOT NULL DEFAULT 0,
    n            INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, status, skip_reason, slot)
) WITHOUT ROWID;

CREATE TRIGGER deliveries_added_count AFTER INSERT ON deliveries
BEGIN
    INSERT INTO campaign_counts (campaign_id, status, skip_reason, slot, n)
    VALUES (NEW.campaign_id, NEW.status, COALESCE(NEW.skip_reason, ''), 0, 1)
    ON CONFLICT (campaign_id, status, skip_reason, slot) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER deliveries_changed_count AFTER UPDATE OF status, skip_reason ON deliveries
    WHEN OLD.status IS NOT NEW.status OR OLD.skip_reason IS NOT NEW.skip_reason
BEGIN
    INSERT INTO campaign_counts (campaign_id, status, skip_reason, slot, n)
    SELECT campaign_id, status, reason, 0, n FROM (
        SELECT OLD.campaign_id AS campaign_id, OLD.status AS status, COALESCE(OLD.skip_reason, '') AS reason, -1 AS n
        UNION ALL SELECT NEW.campaign_id, NEW.status, COALESCE(NEW.skip_reason, ''), 1
    ) WHERE true
    ON CONFLICT (campaign_id, status, skip_reason, slot) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER delivery_sends_count AFTER INSERT ON delivery_sends
BEGIN
    INSERT INTO campaign_counts (campaign_id, status, skip_reason, slot, n)
    SELECT campaign_id, status, reason, 0, n FROM (
        SELECT d.campaign_id AS campaign_id, d.status AS status, COALESCE(d.skip_reason, '') AS reason, -1 AS n
        FROM deliveries d WHERE d.id = NEW.delivery_id
        UNION ALL
        SELECT NEW.campaign_id, CASE WHEN r.status = 'pending' THEN 'requested' ELSE r.status END, '', 1
        FROM send_requests r WHERE r.id = NEW.request_id
    ) WHERE true
    ON CONFLICT (campaign_id, status, skip_reason, slot) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER send_requests_state_count AFTER UPDATE OF status ON send_requests
    WHEN OLD.status IS NOT NEW.status
BEGIN
    INSERT INTO campaign_counts (campaign_id, status, skip_reason, slot, n)
    SELECT s.campaign_id, c.status, '', 0, SUM(c.n)
    FROM delivery_sends s, (
        SELECT CASE WHEN OLD.status = 'pending' THEN 'requested' ELSE OLD.status END AS status, -1 AS n
        UNION ALL SELECT CASE WHEN NEW.status = 'pending' THEN 'requested' ELSE NEW.status END, 1
    ) c
    WHERE s.request_id = NEW.id
    GROUP BY 1, 2
    ON CONFLICT (campaign_id, status, skip_reason, slot) DO UPDATE SET n = n + excluded.n;
END;

INSERT INTO campaign_counts (campaign_id, status, skip_reason, n)
SELECT d.campaign_id,
       CASE WHEN s.request_id IS NULL THEN d.status WHEN r.status = 'pending' THEN 'requested' ELSE r.status END,
       COALESCE(d.skip_reason, ''), COUNT(*)
FROM deliveries d LEFT JOIN delivery_sends s ON s.delivery_id = d.id LEFT JOIN send_requests r ON r.id = s.request_id
GROUP BY 1, 2, 3;
