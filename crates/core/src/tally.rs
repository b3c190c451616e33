//! Running tallies of events, kept by the store as events are inserted.
//!
//! Which events a tally counts is the segment language's business
//! (`renkei-segments` builds the tallies from the segments' conditions); the
//! store only asks each inserted event's marks and adds them up, in the
//! insert's transaction.

use serde_json::{Map, Value};

/// The tallies a store keeps up to date on every insert.
pub trait EventTallier: Send + Sync + 'static {
    /// The tallies kept, as (key, event type); each key once.
    fn tallies(&self) -> &[(String, String)];

    /// Appends to `out` every tally an event of `event_type` with
    /// `properties` adds to: the tally's index in [`EventTallier::tallies`]
    /// and the number it adds (`None`: counted, no number).
    fn marks(&self, event_type: &str, properties: &Map<String, Value>, out: &mut Vec<(usize, Option<f64>)>);
}
