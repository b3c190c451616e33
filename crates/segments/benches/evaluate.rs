//! Evaluator benchmark: `evaluate_in_order` + `next_change` (what the
//! membership engine's `evaluate_record` calls for every user of a
//! recompute) over synthetic users and the example segments.
//!
//! ```text
//! cargo bench -p renkei-segments --bench evaluate
//! ```
//! Env: `RENKEI_BENCH_USERS` (default 200000), `RENKEI_BENCH_ROUNDS` (default 3).
//!
//! Users are generated in batches (like the engine's pages) and only the
//! evaluation is timed. Per round it prints the time of both calls
//! interleaved per user (the engine's pattern) and of each call alone, then
//! members per segment and a checksum of the next-change times, which must
//! not move when the evaluator is optimised.

use chrono::{DateTime, Duration, TimeZone, Utc};
use renkei_core::LineUserId;
use renkei_segments::{EventFact, Properties, SegmentSet, UserFacts};
use renkei_test_support::Rng;
use serde_json::{Map, Value};
use std::time::Instant;

// The allocator the renkei binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: u64 = 1000;

fn member_attributes(rng: &mut Rng, now: DateTime<Utc>) -> Map<String, Value> {
    let rank = ["bronze", "silver", "gold", "platinum"][rng.below(4) as usize];
    let birthday = format!("{:04}-{:02}-{:02}", 1950 + rng.below(55), 1 + rng.below(12), 1 + rng.below(28));
    let registered = now - Duration::days(rng.below(400) as i64);
    let mut attributes = Map::new();
    attributes.insert("rank".into(), Value::from(rank));
    attributes.insert("birthday".into(), Value::from(birthday));
    attributes.insert("registered_at".into(), Value::from(registered.to_rfc3339()));
    attributes
}

fn event(rng: &mut Rng, now: DateTime<Utc>) -> EventFact {
    // Stored times have microsecond precision.
    let occurred = now - Duration::microseconds(rng.below(120 * 86_400 * 1_000_000) as i64);
    let (kind, properties): (&str, Vec<(&str, Value)>) = match rng.below(10) {
        0..=2 => {
            let amount = Value::from(500 + rng.below(20_000));
            ("purchase", vec![("amount", amount), ("cart_id", Value::from(format!("c{}", rng.below(8))))])
        }
        3..=4 => {
            let cart = Value::from(format!("c{}", rng.below(8)));
            ("cart_add", vec![("cart_id", cart), ("sku", Value::from(format!("s{}", rng.below(1000))))])
        }
        5..=6 => ("store_visit", vec![]),
        7 => ("campaign_entry", vec![("campaign_id", Value::from("spring_2026"))]),
        _ => ("page_view", vec![]),
    };
    EventFact {
        event_type: kind.to_string(),
        occurred_at: occurred,
        properties: properties.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Properties>(),
    }
}

/// Users `first..first + count`: all linked, 5 % not following, 10 to 30
/// events each over the last 120 days, sorted by time as the store hands them.
fn users(rng: &mut Rng, first: u64, count: u64, now: DateTime<Utc>) -> Vec<UserFacts> {
    (first..first + count)
        .map(|i| {
            let attributes = member_attributes(rng, now);
            let mut events: Vec<EventFact> = (0..10 + rng.below(21)).map(|_| event(rng, now)).collect();
            events.sort_by_key(|e| e.occurred_at);
            UserFacts {
                line_user_id: LineUserId::parse(&format!("U{i:032x}")).expect("valid LINE user id"),
                linked: true,
                following: i % 20 != 0,
                attributes: Some(attributes),
                events,
                totals: Default::default(),
            }
        })
        .collect()
}

#[derive(Default)]
struct Totals {
    users: u64,
    events: u64,
    both: std::time::Duration,
    evaluate_only: std::time::Duration,
    next_change_only: std::time::Duration,
    members: Vec<u64>,
    with_next_change: u64,
    next_change_checksum: i64,
}

fn round(segments: &SegmentSet, user_count: u64, now: DateTime<Utc>) -> Totals {
    let tz = chrono_tz::Asia::Tokyo;
    let mut rng = Rng(1);
    let mut totals = Totals { members: vec![0; segments.len()], ..Totals::default() };
    let mut first = 0;
    while first < user_count {
        let batch = users(&mut rng, first, BATCH.min(user_count - first), now);
        first += batch.len() as u64;
        totals.users += batch.len() as u64;
        totals.events += batch.iter().map(|u| u.events.len() as u64).sum::<u64>();

        let started = Instant::now();
        for facts in &batch {
            let answers = segments.evaluate_in_order(facts, now, tz);
            let next = segments.next_change(facts, now, tz).filter(|due| *due > now);
            for (count, inside) in totals.members.iter_mut().zip(answers) {
                *count += u64::from(inside);
            }
            if let Some(next) = next {
                totals.with_next_change += 1;
                totals.next_change_checksum =
                    totals.next_change_checksum.wrapping_add(next.timestamp_nanos_opt().unwrap_or(i64::MAX));
            }
        }
        totals.both += started.elapsed();

        // Each call alone; the results only feed a sink, checked below.
        let started = Instant::now();
        let mut sink = 0u64;
        for facts in &batch {
            sink += segments.evaluate_in_order(facts, now, tz).iter().filter(|inside| **inside).count() as u64;
        }
        totals.evaluate_only += started.elapsed();
        let started = Instant::now();
        for facts in &batch {
            sink += u64::from(segments.next_change(facts, now, tz).is_some());
        }
        totals.next_change_only += started.elapsed();
        assert_eq!(sink, totals_in_batch(segments, &batch, now), "evaluations are deterministic");
    }
    totals
}

/// Members plus users with a next change, for the sink check.
fn totals_in_batch(segments: &SegmentSet, batch: &[UserFacts], now: DateTime<Utc>) -> u64 {
    let tz = chrono_tz::Asia::Tokyo;
    batch
        .iter()
        .map(|facts| {
            let members = segments.evaluate_in_order(facts, now, tz).iter().filter(|inside| **inside).count() as u64;
            members + u64::from(segments.next_change(facts, now, tz).is_some())
        })
        .sum()
}

/// Building events' `Properties` from the store's key/value lists (what
/// `facts_of` does per event): collected one key at a time, and taken whole.
fn properties_construction(event_count: u64, now: DateTime<Utc>) {
    let mut rng = Rng(2);
    let lists: Vec<Vec<(String, Value)>> =
        (0..event_count).map(|_| event(&mut rng, now).properties.to_map().into_iter().collect()).collect();
    let copies = lists.clone();
    let started = Instant::now();
    let collected: Vec<Properties> = lists.into_iter().map(|list| list.into_iter().collect()).collect();
    let collect_time = started.elapsed();
    let started = Instant::now();
    let converted: Vec<Properties> = copies.into_iter().map(Properties::from).collect();
    let from_time = started.elapsed();
    assert_eq!(collected.len(), converted.len());
    let keys: usize = converted.iter().map(Properties::len).sum();
    println!(
        "properties of {event_count} events ({keys} keys): collect {:.1} ns/event, Properties::from {:.1} ns/event",
        collect_time.as_nanos() as f64 / event_count as f64,
        from_time.as_nanos() as f64 / event_count as f64,
    );
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A full run under `cargo bench`; a small smoke run under `cargo test` (CI).
fn smoke_run() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

fn main() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/segments");
    let segments = SegmentSet::load_dir(dir).unwrap_or_else(|d| panic!("{} segment problems in {dir}", d.len()));
    let (user_count, rounds) = if smoke_run() {
        (300, 1)
    } else {
        (env_u64("RENKEI_BENCH_USERS", 200_000).max(1), env_u64("RENKEI_BENCH_ROUNDS", 3).max(1))
    };
    // A fixed instant with a sub-second part, like `Utc::now()`.
    let now = Utc.with_ymd_and_hms(2026, 3, 15, 3, 4, 5).single().expect("valid instant")
        + Duration::nanoseconds(123_456_789);
    println!("evaluate bench: {user_count} users, {} segments, now {now}, {rounds} rounds", segments.len());
    properties_construction(if smoke_run() { 1_000 } else { 1_000_000 }, now);
    for r in 1..=rounds {
        let totals = round(&segments, user_count, now);
        let per_user = |d: std::time::Duration| d.as_nanos() as f64 / totals.users as f64;
        let per_event = |d: std::time::Duration| d.as_nanos() as f64 / totals.events as f64;
        println!(
            "round {r}: {} users, {} events: evaluate_in_order + next_change {:.0} ns/user, {:.1} ns/event \
             ({:.3} s); alone: evaluate_in_order {:.0} ns/user, next_change {:.0} ns/user",
            totals.users,
            totals.events,
            per_user(totals.both),
            per_event(totals.both),
            totals.both.as_secs_f64(),
            per_user(totals.evaluate_only),
            per_user(totals.next_change_only),
        );
        if r == 1 {
            for (segment, count) in segments.in_dependency_order().zip(&totals.members) {
                println!("  {:<24} {count} members", segment.id);
            }
            println!(
                "  next change: {} users, checksum {:#018x}",
                totals.with_next_change, totals.next_change_checksum
            );
        }
    }
}
