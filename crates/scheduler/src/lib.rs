//! The scheduler role: [`CampaignRunner`] turns campaign triggers
//! (segment entries, events with a delay or a time property, cron fires)
//! into deliveries in the outbox, once per trigger, wakes the dispatcher, and
//! keeps each user's desired rich menu. [`dry_run`] answers who a campaign
//! would reach at an instant, judged by the dispatcher's policies, without
//! sending or storing anything.

pub mod dry_run;
pub mod runner;

pub use dry_run::{DryRunRow, DryRunStore, dry_run};
pub use runner::{CampaignRunner, RICH_MENU_SYNC_LEASE, RunnerSettings, RunnerStore};

use renkei_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown campaign `{0}`")]
    UnknownCampaign(String),
    #[error(transparent)]
    Membership(#[from] renkei_evaluator::MembershipError),
    #[error(transparent)]
    Dispatch(#[from] renkei_dispatcher::DispatchError),
}

pub type SchedulerResult<T> = Result<T, SchedulerError>;
