//! Running tallies of events (migration 0014): the store adds up, in each
//! insert's transaction, the tallies its [`EventTallier`] names for the
//! events the insert actually stored, and builds a key's rows from the
//! stored events when the key is new (or, on a rebuild, every key).
//!
//! What differs per backend (the upsert, the lock, list parameters) is in
//! `sqlite/tallies.rs` and `postgres/tallies.rs`; the adding up is here.

use crate::events::MergedEvent;
use crate::membership::properties_of;
use chrono::{DateTime, Utc};
use renkei_core::{EventTallier, NewEvent};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// The tallier a store keeps tallies for, set once the segments are known
/// (none: no tally is kept, and none may be read).
#[derive(Clone, Default)]
pub(crate) struct TallierSlot(Arc<RwLock<Option<Arc<dyn EventTallier>>>>);

impl TallierSlot {
    /// The tallier, when it keeps any tally.
    pub(crate) fn get(&self) -> Option<Arc<dyn EventTallier>> {
        let tallier = self.0.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        (!tallier.tallies().is_empty()).then_some(tallier)
    }

    /// The tallier as set, even one that keeps no tally (whose build
    /// deletes every stored tally).
    pub(crate) fn get_any(&self) -> Option<Arc<dyn EventTallier>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set(&self, tallier: Arc<dyn EventTallier>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(tallier);
    }
}

/// What one batch adds to one tally row.
#[derive(Debug, Clone, PartialEq)]
pub struct TallyAdd {
    pub(crate) line_user_id: String,
    pub(crate) member_id: String,
    pub(crate) key: String,
    pub(crate) count: i64,
    pub(crate) numbers: i64,
    pub(crate) sum: f64,
    pub(crate) min: Option<f64>,
    pub(crate) max: Option<f64>,
    pub(crate) last_at: DateTime<Utc>,
}

impl TallyAdd {
    fn add(&mut self, occurred_at: DateTime<Utc>, number: Option<f64>) {
        self.count += 1;
        self.last_at = self.last_at.max(occurred_at);
        if let Some(number) = number {
            self.numbers += 1;
            self.sum += number;
            self.min = Some(self.min.map_or(number, |m| m.min(number)));
            self.max = Some(self.max.map_or(number, |m| m.max(number)));
        }
    }
}

/// Adds events up per tally row (source and key).
pub(crate) struct Adder<'t> {
    tallier: &'t dyn EventTallier,
    /// Tallies to add to (indices into the tallier's); `None`: all.
    only: Option<BTreeSet<usize>>,
    rows: HashMap<(String, String, usize), TallyAdd>,
    marks: Vec<(usize, Option<f64>)>,
}

impl<'t> Adder<'t> {
    pub(crate) fn new(tallier: &'t dyn EventTallier, only: Option<BTreeSet<usize>>) -> Self {
        Self { tallier, only, rows: HashMap::new(), marks: Vec::new() }
    }

    /// Adds one stored event. Events stored ahead of their time count from
    /// then on, read raw: they are left out, as from `event_totals`.
    pub(crate) fn add(
        &mut self,
        line_user_id: Option<&str>,
        member_id: Option<&str>,
        event_type: &str,
        occurred_at: DateTime<Utc>,
        received_at: DateTime<Utc>,
        properties: &Map<String, Value>,
    ) {
        if occurred_at > received_at {
            return;
        }
        self.marks.clear();
        self.tallier.marks(event_type, properties, &mut self.marks);
        for &(index, number) in &self.marks {
            if self.only.as_ref().is_some_and(|only| !only.contains(&index)) {
                continue;
            }
            let (line_user_id, member_id) = (line_user_id.unwrap_or(""), member_id.unwrap_or(""));
            let row =
                self.rows.entry((line_user_id.to_string(), member_id.to_string(), index)).or_insert_with(|| TallyAdd {
                    line_user_id: line_user_id.to_string(),
                    member_id: member_id.to_string(),
                    key: self.tallier.tallies()[index].0.clone(),
                    count: 0,
                    numbers: 0,
                    sum: 0.0,
                    min: None,
                    max: None,
                    last_at: occurred_at,
                });
            row.add(occurred_at, number);
        }
    }

    /// Adds one event as a build reads it from `events`.
    pub(crate) fn add_stored(&mut self, event: StoredRow) {
        let properties = properties_of(serde_json::from_str(&event.properties).unwrap_or_default());
        let (line_user_id, member_id) = (event.line_user_id.as_deref(), event.member_id.as_deref());
        self.add(line_user_id, member_id, &event.event_type, event.occurred_at, event.received_at, &properties);
    }

    /// The rows, in key order (concurrent batches lock rows in one order).
    pub(crate) fn finish(self) -> Vec<TallyAdd> {
        let mut rows: Vec<TallyAdd> = self.rows.into_values().collect();
        rows.sort_by(|a, b| (&a.line_user_id, &a.member_id, &a.key).cmp(&(&b.line_user_id, &b.member_id, &b.key)));
        rows
    }
}

/// An `events` row as a build reads it (properties as JSON text).
pub(crate) struct StoredRow {
    pub(crate) line_user_id: Option<String>,
    pub(crate) member_id: Option<String>,
    pub(crate) event_type: String,
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) received_at: DateTime<Utc>,
    pub(crate) properties: String,
}

/// The tallies a batch adds: those of the events it stored (`stored[i]`
/// for `events[i]`).
pub(crate) fn batch_tallies(
    tallier: &dyn EventTallier,
    events: &[NewEvent],
    stored: &[bool],
    received_at: DateTime<Utc>,
) -> Vec<TallyAdd> {
    let mut adder = Adder::new(tallier, None);
    for (event, _) in events.iter().zip(stored).filter(|(_, stored)| **stored) {
        adder.add(
            event.line_user_id.as_ref().map(|id| id.as_str()),
            event.member_id.as_ref().map(|id| id.as_str()),
            event.event_type.as_str(),
            event.occurred_at,
            received_at,
            &event.properties,
        );
    }
    adder.finish()
}

/// The tally rows a merge of inbox rows adds (every event stored).
pub(crate) fn merged_tallies(tallier: &dyn EventTallier, events: &[MergedEvent]) -> Vec<TallyAdd> {
    let mut adder = Adder::new(tallier, None);
    for event in events {
        adder.add(
            event.line_user_id.as_deref(),
            event.member_id.as_deref(),
            &event.event_type,
            event.occurred_at,
            event.received_at,
            &event.properties,
        );
    }
    adder.finish()
}

/// Which of a batch's events an `INSERT … ON CONFLICT (event_id) DO
/// NOTHING` stored, from the `event_id`s it returned: every event without
/// an id, and the first of each returned id.
pub(crate) fn stored_of(events: &[NewEvent], returned: &[String]) -> Vec<bool> {
    let returned: BTreeSet<&str> = returned.iter().map(String::as_str).collect();
    let mut seen = BTreeSet::new();
    events
        .iter()
        .map(|event| match &event.event_id {
            None => true,
            Some(id) => returned.contains(id.as_str()) && seen.insert(id.as_str()),
        })
        .collect()
}

/// What a build of the tallies does: which keys to build from the events,
/// and which stored keys no longer have a tally.
pub(crate) struct BuildPlan {
    /// Indices into the tallier's tallies.
    pub(crate) build: BTreeSet<usize>,
    /// Keys to delete: those rebuilt and those gone.
    pub(crate) delete: Vec<String>,
    /// The event types to read.
    pub(crate) types: Vec<String>,
}

impl BuildPlan {
    /// `built`: the keys `event_tally_keys` holds; `all`: rebuild every key.
    pub(crate) fn new(tallier: &dyn EventTallier, built: &[String], all: bool) -> Self {
        let tallies = tallier.tallies();
        let build: BTreeSet<usize> = (0..tallies.len()).filter(|&i| all || !built.contains(&tallies[i].0)).collect();
        let wanted: BTreeSet<&str> = tallies.iter().map(|(key, _)| key.as_str()).collect();
        let mut delete: Vec<String> = built.iter().filter(|k| !wanted.contains(k.as_str())).cloned().collect();
        delete.extend(build.iter().map(|&i| tallies[i].0.clone()));
        let types: BTreeSet<String> = build.iter().map(|&i| tallies[i].1.clone()).collect();
        Self { build, delete, types: types.into_iter().collect() }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.delete.is_empty()
    }
}

/// Rows per upsert statement while building.
pub(crate) const BUILD_CHUNK: usize = 5_000;
