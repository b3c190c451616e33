//! The segment YAML language of renkei (see `config/segments/` and the README).
//!
//! - [`SegmentSet::load_dir`] reads every `*.yaml` / `*.yml` file of a
//!   directory (one segment each) and returns either a valid set or every
//!   problem found, each a [`Diagnostic`] shown as `file:line:col: message`.
//! - [`SegmentSet::evaluate`] answers every segment for one user's
//!   [`UserFacts`] at an instant, in a timezone (for `anniversary` and for
//!   bare `YYYY-MM-DD` values, which mean the start of that day there).
//! - [`SegmentSet::next_change`] gives the earliest instant after `now` at
//!   which an answer could change with no new data.
//!
//! Time windows are half-open: an event condition selects events with
//! `occurred_at` in `(now - within, now - older_than]`, never after `now`;
//! attribute `within: d` holds for a time in `(now - d, now]` and
//! `older_than: d` for a time at or before `now - d`. A follow-up must be
//! strictly later than the first event, at or before `now`, and at most
//! `within` after the first event (inclusive). Comparisons never coerce
//! types: a comparison between different JSON types is false, `ne` and
//! `not_in` included; a missing or null value fails every comparison except
//! `exists: false`. `match` requires the property to be present and equal
//! on both events.
//!
//! Everything is pure except [`SegmentSet::load_dir`], which reads files.

pub mod ast;
pub mod calendar;
pub mod diagnostic;
mod eval;
pub mod files;
mod next_change;
mod parse;
pub mod set;
pub mod tally;
pub mod yaml;

pub use ast::{
    Aggregate, AggregateKind, AnniversaryWhen, Comparator, Condition, EventCondition, FieldPath, FollowUp,
    PropertyFilter, Segment,
};
pub use diagnostic::Diagnostic;
pub use eval::{EventFact, EventTotals, Properties, UserFacts, properties_match};
pub use parse::parse_where;
pub use set::{SegmentChanges, SegmentSet};
pub use tally::{TalliedCondition, Tallier};
pub use yaml::Pos;
