//! Campaigns at run time (SPEC §6, §8).
//!
//! - [`CampaignRunner`] turns triggers (segment entries, events with a delay
//!   or a time property, cron fires) into deliveries in the outbox, and keeps
//!   each user's desired rich menu;
//! - [`Dispatcher`] applies the [`policy`] layer to due deliveries, groups
//!   identical messages into multicasts and personalised ones into pushes,
//!   fixes each request's `X-Line-Retry-Key` in the database before the first
//!   attempt, and sends within each endpoint's rate ([`limits`]);
//! - [`RichMenuLinker`] links the desired menus (bulk for mass changes);
//! - [`QuotaGuard`] pauses sending before the monthly quota runs out.
//!
//! Everything a step decides is committed before the next step acts on it, so
//! a crash at any point resumes without losing or doubling a message.

pub mod dry_run;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod quota;
pub mod rich_menus;
pub mod runner;
pub mod sender;

pub use dry_run::{DryRunRow, dry_run};
pub use limits::{Rates, RetrySchedule};
pub use metrics::DispatchMetrics;
pub use policy::{GlobalPolicy, SkipReason};
pub use quota::QuotaGuard;
pub use rich_menus::RichMenuLinker;
pub use runner::{CampaignRunner, RunnerSettings};
pub use sender::{DispatchSettings, Dispatcher};

use renkei_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown campaign `{0}`")]
    UnknownCampaign(String),
    #[error(transparent)]
    Membership(#[from] renkei_membership::MembershipError),
    #[error("dispatch task failed: {0}")]
    Task(String),
}

pub type DispatchResult<T> = Result<T, DispatchError>;
