//! The dispatcher role: the outbox to LINE, never twice, never to the blocked.
//!
//! [`Dispatcher`] works the outbox in stages, each its own module and each
//! ending in a committed state change, so a crash at any point resumes
//! without losing or doubling a message:
//! - [`planner`]: claims due deliveries, applies the [`policy`] layer (facts
//!   loaded per batch in [`facts`]), groups identical messages into
//!   multicasts and personalised ones into pushes ([`grouping`]), and fixes
//!   each request's `X-Line-Retry-Key` in the database before the first
//!   attempt;
//! - [`sender`]: claims due requests and sends them within each endpoint's
//!   rate ([`limits`]), one [`attempt`] each;
//! - [`recorder`]: records each outcome.
//!
//! Beside it: [`RichMenuLinker`] links the desired menus (bulk for mass
//! changes); [`QuotaGuard`] pauses sending before the monthly quota runs out;
//! [`DispatchMetrics`] counts for `/metrics`.

pub mod attempt;
pub mod dispatcher;
pub mod facts;
pub mod grouping;
pub mod insight;
pub mod limits;
pub mod metrics;
pub mod planner;
pub mod policy;
pub mod quota;
pub mod recorder;
pub mod rich_menus;
pub mod sender;

pub use dispatcher::{DispatchSettings, Dispatcher, DispatcherStore};
pub use facts::{PolicyContext, decide_deliveries};
pub use insight::InsightPoller;
pub use limits::{Rates, RetrySchedule};
pub use metrics::DispatchMetrics;
pub use policy::{GlobalPolicy, SkipReason};
pub use quota::{QUOTA_MARK, QuotaGuard, parse_mark as parse_quota_mark};
pub use rich_menus::RichMenuLinker;

use renkei_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("dispatch task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Line(#[from] renkei_line::LineError),
}

pub type DispatchResult<T> = Result<T, DispatchError>;
