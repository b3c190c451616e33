-- Fan-out triggers (再入荷) find the users whose events of a type carry the
-- trigger event's `sku` within a window: `type = ? AND sku = ? AND
-- occurred_at in (since, until]`. This index answers that with one range per
-- type, whatever the size of the events table; only events that carry a
-- `sku` are in it, so other events cost no index writes. A fan-out matching
-- on other properties reads every event of its types in the window (add an
-- index of this shape for such a property).
--
-- Backend differences: SQLite indexes `json_extract(properties, '$.sku')`
-- of valid JSON only (json_extract fails on anything else, which would make
-- writing such a row fail), PostgreSQL `(properties ->> 'sku')` (jsonb is
-- always valid); each is the expression the store's fan-out query writes
-- (`crates/store/src/{sqlite,postgres}/events.rs`).
CREATE INDEX events_sku ON events
    (type, (CASE WHEN json_valid(properties) THEN json_extract(properties, '$.sku') END), occurred_at)
    WHERE (CASE WHEN json_valid(properties) THEN json_extract(properties, '$.sku') END) IS NOT NULL;
