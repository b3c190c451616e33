//! Storage for LINE webhook inbox (dedupe on webhookEventId), friendships and the account-link nonces.
//! Both backends' implementations live in this file.

use crate::{PgStore, SqliteStore};
use async_trait::async_trait;

#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {}

#[async_trait]
impl WebhookStore for SqliteStore {}

#[async_trait]
impl WebhookStore for PgStore {}
