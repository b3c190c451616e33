-- The outbox as on PostgreSQL (see its 0005 for why): pending deliveries wait
-- in `delivery_queue`, a delivery's assignment to a request is a
-- `delivery_sends` row (counted by the frequency caps), and sent or failed is
-- the request's state. `deliveries.status` now only moves from 'pending' to
-- 'skipped'; a delivery with a `delivery_sends` row takes its state from the
-- request. Claims hold the single writer, so leases are gone.

CREATE TABLE delivery_queue (
    delivery_id  INTEGER PRIMARY KEY,
    campaign_id  TEXT NOT NULL,
    due_at       INTEGER NOT NULL
);
CREATE INDEX delivery_queue_due ON delivery_queue (due_at, delivery_id);

CREATE TABLE delivery_sends (
    delivery_id   INTEGER PRIMARY KEY,
    request_id    INTEGER NOT NULL,
    campaign_id   TEXT NOT NULL,
    line_user_id  TEXT NOT NULL,
    requested_at  INTEGER NOT NULL
);
CREATE INDEX delivery_sends_user ON delivery_sends (line_user_id, requested_at);

INSERT INTO delivery_queue (delivery_id, campaign_id, due_at)
    SELECT id, campaign_id, due_at FROM deliveries WHERE status = 'pending';
INSERT INTO delivery_sends (delivery_id, request_id, campaign_id, line_user_id, requested_at)
    SELECT id, request_id, campaign_id, line_user_id, requested_at FROM deliveries
    WHERE request_id IS NOT NULL AND line_user_id IS NOT NULL AND requested_at IS NOT NULL;

-- SQLite drops a column only once no index refers to it.
DROP INDEX deliveries_pending_due;
DROP INDEX deliveries_user_requested;
DROP INDEX deliveries_request;
DROP INDEX deliveries_leased;
ALTER TABLE deliveries DROP COLUMN request_id;
ALTER TABLE deliveries DROP COLUMN requested_at;
ALTER TABLE deliveries DROP COLUMN lease_owner;
ALTER TABLE deliveries DROP COLUMN lease_until;
ALTER TABLE deliveries DROP COLUMN error;
