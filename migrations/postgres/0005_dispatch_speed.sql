-- Dispatch at LINE's multicast rate (200 requests/s x 500 = ~100,000
-- deliveries/s). Every update of a `deliveries` row is non-HOT (its indexed
-- columns or partial-index predicates change), so it rewrites the wide row
-- and inserts into each index; three of them per delivery (lease, requested,
-- sent) made the outbox, not LINE, the limit. Now a delivery row is written
-- once and left alone on its way out:
-- * pending deliveries wait in the narrow `delivery_queue`; a planner holds
--   its rows with FOR UPDATE SKIP LOCKED in the transaction that commits the
--   requests, so claiming writes nothing and a crash simply rolls back;
-- * assigning a delivery to a request inserts a narrow `delivery_sends` row,
--   which the frequency caps count;
-- * sent or failed is the request's state, so completing a multicast writes
--   one row, not 501.
-- `deliveries.status` now only moves from 'pending' to 'skipped'; a delivery
-- with a `delivery_sends` row takes its state from the request.
-- Messages, contexts and recipients are only stored and read back whole,
-- never queried into: `json` keeps their text, where `jsonb` rebuilt it on
-- every read (the largest cost of a claim).

CREATE TABLE delivery_queue (
    delivery_id  BIGINT PRIMARY KEY,
    campaign_id  TEXT NOT NULL,
    due_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX delivery_queue_due ON delivery_queue (due_at, delivery_id);

CREATE TABLE delivery_sends (
    delivery_id   BIGINT PRIMARY KEY,
    request_id    BIGINT NOT NULL,
    campaign_id   TEXT NOT NULL,
    line_user_id  TEXT NOT NULL,
    requested_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX delivery_sends_user ON delivery_sends (line_user_id, requested_at);

INSERT INTO delivery_queue (delivery_id, campaign_id, due_at)
    SELECT id, campaign_id, due_at FROM deliveries WHERE status = 'pending';
INSERT INTO delivery_sends (delivery_id, request_id, campaign_id, line_user_id, requested_at)
    SELECT id, request_id, campaign_id, line_user_id, requested_at FROM deliveries
    WHERE request_id IS NOT NULL AND line_user_id IS NOT NULL AND requested_at IS NOT NULL;

-- Their indexes go with them.
ALTER TABLE deliveries
    DROP COLUMN request_id,
    DROP COLUMN requested_at,
    DROP COLUMN lease_owner,
    DROP COLUMN lease_until,
    DROP COLUMN error;
DROP INDEX deliveries_pending_due;

ALTER TABLE deliveries ALTER COLUMN context DROP DEFAULT;
ALTER TABLE deliveries
    ALTER COLUMN messages TYPE json USING messages::json,
    ALTER COLUMN context TYPE json USING context::json;
ALTER TABLE deliveries ALTER COLUMN context SET DEFAULT '{}'::json;
ALTER TABLE send_requests
    ALTER COLUMN messages TYPE json USING messages::json,
    ALTER COLUMN recipients TYPE json USING recipients::json;
