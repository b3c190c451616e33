//! renkei's domain: identifiers, events, members, durations and the clock.
//!
//! Everything here is pure: no I/O, no global time. Parsing functions turn
//! untrusted input into types that cannot hold a bad value.

pub mod change;
pub mod clock;
pub mod duration;
pub mod event;
pub mod ids;
pub mod json;
pub mod member;
pub mod retry;
pub mod state;
pub mod tally;

pub use change::{ChangeListener, NoChangeListener, UserRef};
pub use clock::{Clock, ManualClock, SystemClock};
pub use duration::{DurationParseError, SpanDuration};
pub use event::{FieldError, ItemError, NewEvent, parse_event_batch, required_string};
pub use ids::{EventId, EventType, IdError, LineUserId, LinkMethod, MemberId};
pub use member::{MemberPatch, merge_attributes};
pub use retry::RetrySchedule;
pub use state::{Cause, DeferReason, DeliveryStatus, FireState, SkipReason, TransitionKind};
pub use tally::EventTallier;
