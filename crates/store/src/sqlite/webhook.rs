//! SQLite's side of the webhook inbox.

use crate::SqliteStore;
use crate::webhook::{WebhookSql, webhook_columns};

impl WebhookSql for SqliteStore {
    // One writer connection: the UPDATE is the claim, no other worker can interleave.
    const CLAIM_EVENTS: &'static str = concat!(
        "UPDATE webhook_events SET claimed_until = $1, attempts = attempts + 1
         WHERE id IN (SELECT id FROM webhook_events
                      WHERE processed_at IS NULL AND (claimed_until IS NULL OR claimed_until <= $2)
                      ORDER BY id LIMIT $3)
         RETURNING ",
        webhook_columns!()
    );
}
