//! Helpers shared by the store's test binaries (each uses a part of them).
#![allow(dead_code)]

use chrono::{DateTime, TimeZone, Utc};
use renkei_core::{LineUserId, MemberId, NewEvent};
use serde_json::Value;

/// 2026-11-23 at `hour`:00 UTC.
pub fn at(hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, hour, 0, 0).single().expect("valid time")
}

pub fn user(n: u32) -> LineUserId {
    LineUserId::parse(&format!("U{:032x}", n)).expect("valid user id")
}

pub fn member(id: &str) -> MemberId {
    MemberId::parse(id).expect("valid member id")
}

pub fn event(value: Value) -> NewEvent {
    NewEvent::parse(&value).expect("valid event")
}
