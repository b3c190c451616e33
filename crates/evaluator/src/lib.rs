//! The evaluator role: the segment engine's runtime, keeping every segment's
//! membership current, and [`Evaluator`], the handle `renkei serve` runs it by.
//!
//! Segment semantics live in `renkei-segments` (pure); this crate feeds it
//! stored facts and writes the answers back:
//! - real time: [`EngineHandle`] is a [`renkei_core::ChangeListener`];
//!   changed users wait in a bounded queue, each user once, and a worker
//!   re-evaluates them (a full queue becomes one full recompute);
//! - time-driven: every evaluation stores the user's next change instant
//!   ([`renkei_segments::SegmentSet::next_change`]); a timer task wakes at
//!   the earliest one ([`MembershipEngine::run_due`] does one round);
//! - full recompute: [`MembershipEngine::recompute_all`] streams the whole
//!   audience universe page by page; [`MembershipEngine::recompute_segments`]
//!   does so for some segments only (a start's changed segments).
//!
//! All three go through the same [`MembershipEngine::evaluate_users`], so
//! they give identical memberships; every difference is a transition.

mod engine;
mod evaluator;
mod feed;
mod mark;
mod queue;
mod runtime;

pub use engine::{EngineStore, MembershipEngine, RecomputeProgress, RecomputeReport, facts_of};
pub use evaluator::{Evaluator, RECOMPUTE_LEASE, RECOMPUTED_MARK};
pub use queue::{Backlog, DEFAULT_CAPACITY as DEFAULT_QUEUE_CAPACITY, Leftover};
pub use renkei_store::membership::{Cause, Transition, TransitionKind};
pub use runtime::{EngineHandle, TIMER_LEASE};

use renkei_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown segment `{0}`")]
    UnknownSegment(String),
    #[error("evaluation task failed: {0}")]
    Task(String),
}

pub type MembershipResult<T> = Result<T, MembershipError>;
