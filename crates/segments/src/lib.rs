//! The segment YAML language of renkei (SPEC §5): parsing with positioned
//! diagnostics, evaluation of one user's facts at an instant, and the next
//! instant at which an answer could change with no new data.

pub mod ast;
pub mod diagnostic;
mod parse;
pub mod set;
pub mod yaml;

pub use ast::{
    Aggregate, AggregateKind, AnniversaryWhen, Comparator, Condition, EventCondition, FieldPath, FollowUp,
    PropertyFilter, Segment,
};
pub use diagnostic::Diagnostic;
pub use set::SegmentSet;
pub mod calendar;
mod eval;
pub use eval::{EventFact, UserFacts};
mod next_change;
