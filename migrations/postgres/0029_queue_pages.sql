-- `delivery_queue` holds pages: one row for the deliveries one enqueue
-- statement added for one campaign and due time (a fire's page of 1,000),
-- with their ids, LINE users, members and payload rows as arrays, in id
-- order. A row per delivery cost ~4 µs at enqueue (a tuple and two index
-- entries) and as much again at its claim (a row lock and a delete), for a
-- fire of 1M on the same two cores that plan and send it.
--
-- `delivery_id` is the page's key: its first delivery. A claim takes whole
-- pages in `(due_at, delivery_id)` order and splits the last one it needs
-- (`claim_queued`); a deferred delivery comes back as a page of one.
--
-- PostgreSQL only: SQLite keeps a row per delivery (its 0029 adds `size`,
-- always 1, so the overview counts both alike).
ALTER TABLE delivery_queue
    ADD COLUMN delivery_ids BIGINT[],
    ADD COLUMN line_user_ids TEXT[],
    ADD COLUMN member_ids TEXT[],
    ADD COLUMN payload_ofs BIGINT[],
    ADD COLUMN size INTEGER;
UPDATE delivery_queue SET delivery_ids = ARRAY[delivery_id], line_user_ids = ARRAY[line_user_id::text],
                          member_ids = ARRAY[member_id::text], payload_ofs = ARRAY[payload_of], size = 1;
ALTER TABLE delivery_queue
    ALTER COLUMN delivery_ids SET NOT NULL,
    ALTER COLUMN line_user_ids SET NOT NULL,
    ALTER COLUMN member_ids SET NOT NULL,
    ALTER COLUMN payload_ofs SET NOT NULL,
    ALTER COLUMN size SET NOT NULL,
    DROP COLUMN line_user_id,
    DROP COLUMN member_id,
    DROP COLUMN payload_of;

-- Holds and returns the due pages of running campaigns past `(after_due,
-- after_id)`, in queue order, until they hold `wanted` deliveries; pages
-- other transactions hold are passed by (SKIP LOCKED). The taken pages
-- leave the queue; of the last one only the deliveries needed are taken,
-- and the rest stays queued under its next id. The cursor fetches a row at
-- a time, so no page is held that is not taken.
CREATE FUNCTION claim_queued(due_by TIMESTAMPTZ, wanted INTEGER, after_due TIMESTAMPTZ, after_id BIGINT)
RETURNS SETOF delivery_queue LANGUAGE plpgsql AS $$
DECLARE
    pages CURSOR FOR
        SELECT * FROM delivery_queue q
        WHERE q.due_at <= due_by AND (q.due_at, q.delivery_id) > (after_due, after_id)
          AND q.campaign_id <> ALL(ARRAY(SELECT c.campaign_id FROM campaign_state c WHERE c.paused))
        ORDER BY q.due_at, q.delivery_id
        FOR UPDATE OF q SKIP LOCKED;
    taken INTEGER := 0;
    k INTEGER;
BEGIN
    IF wanted <= 0 THEN
        RETURN;
    END IF;
    FOR page IN pages LOOP
        IF taken + page.size <= wanted THEN
            DELETE FROM delivery_queue WHERE CURRENT OF pages;
            RETURN NEXT page;
            taken := taken + page.size;
        ELSE
            k := wanted - taken;
            UPDATE delivery_queue
            SET delivery_id = page.delivery_ids[k + 1], delivery_ids = page.delivery_ids[k + 1:],
                line_user_ids = page.line_user_ids[k + 1:], member_ids = page.member_ids[k + 1:],
                payload_ofs = page.payload_ofs[k + 1:], size = page.size - k
            WHERE CURRENT OF pages;
            page.delivery_ids := page.delivery_ids[:k];
            page.line_user_ids := page.line_user_ids[:k];
            page.member_ids := page.member_ids[:k];
            page.payload_ofs := page.payload_ofs[:k];
            page.size := k;
            RETURN NEXT page;
            taken := wanted;
        END IF;
        EXIT WHEN taken >= wanted;
    END LOOP;
END
$$;

ANALYZE delivery_queue;
