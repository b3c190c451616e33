//! Storage for segment memberships, transitions and evaluation schedule.
//! Both backends' implementations live in this file.

use crate::{PgStore, SqliteStore};
use async_trait::async_trait;

#[async_trait]
pub trait MembershipStore: Send + Sync + 'static {}

#[async_trait]
impl MembershipStore for SqliteStore {}

#[async_trait]
impl MembershipStore for PgStore {}
