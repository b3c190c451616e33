//! Counters exposed on `/metrics` in Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub events_accepted: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_merged: AtomicU64,
    pub batches_rejected: AtomicU64,
    pub members_upserted: AtomicU64,
    pub links_created: AtomicU64,
    pub links_removed: AtomicU64,
}

impl IngestMetrics {
    pub fn add(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    /// Appends these counters to a Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        let rows = [
            ("renkei_events_accepted_total", "Events stored.", &self.events_accepted),
            ("renkei_events_duplicate_total", "Events ignored as repeats of a known event_id.", &self.events_duplicate),
            (
                "renkei_events_merged_total",
                "Appended events this instance moved from the inbox into events (PostgreSQL).",
                &self.events_merged,
            ),
            ("renkei_batches_rejected_total", "Batches refused whole for invalid items.", &self.batches_rejected),
            ("renkei_members_upserted_total", "Member records created or merged.", &self.members_upserted),
            ("renkei_links_created_total", "ID links created.", &self.links_created),
            ("renkei_links_removed_total", "ID links removed.", &self.links_removed),
        ];
        for (name, help, value) in rows {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
    }
}
