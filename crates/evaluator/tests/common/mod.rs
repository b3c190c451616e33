//! Shared test fixtures: a SQLite store, segments from YAML, a manual clock.
#![allow(dead_code)]

use chrono::{DateTime, TimeZone, Utc};
use renkei_core::{LineUserId, ManualClock, MemberId, NewEvent};
use renkei_evaluator::{EngineStore, MembershipEngine};
use renkei_segments::SegmentSet;
use renkei_test_support::{self as test_support, TestStore};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).single().expect("valid time")
}

pub fn user(n: u8) -> LineUserId {
    LineUserId::parse(&format!("U{:032x}", n)).expect("valid user id")
}

pub fn member(n: u8) -> MemberId {
    MemberId::parse(&format!("m{n}")).expect("valid member id")
}

pub fn event(value: Value) -> NewEvent {
    NewEvent::parse(&value).expect("valid event")
}

/// Segments from `(file name, yaml)` pairs.
pub fn segments(files: &[&str]) -> Arc<SegmentSet> {
    let sources = files.iter().enumerate().map(|(i, text)| (PathBuf::from(format!("s{i}.yaml")), text.to_string()));
    Arc::new(SegmentSet::from_sources(sources).expect("valid segments"))
}

pub struct Fixture {
    pub test: TestStore,
    pub clock: ManualClock,
    pub engine: Arc<MembershipEngine>,
}

pub async fn fixture(files: &[&str]) -> Fixture {
    let test = test_support::sqlite().await.expect("sqlite store");
    let clock = ManualClock::new(t0());
    let engine = Arc::new(
        MembershipEngine::new(
            EngineStore::of(&test.store),
            segments(files),
            Arc::new(clock.clone()),
            chrono_tz::Asia::Tokyo,
        )
        .with_page_size(3),
    );
    Fixture { test, clock, engine }
}
