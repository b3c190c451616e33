//! Time rules: quiet hours, cron in Asia/Tokyo, catch-up, event timing, unless.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, NaiveTime, Utc};
use chrono_tz::{America, Asia};
use renkei_campaigns::schedule::{CatchUp, MAX_MISSED, catch_up, fires_between, last_fire_at_or_before, next_fire};
use renkei_campaigns::{QuietHours, Timing, Unless};
use serde_json::{Map, Value, json};
use std::str::FromStr;

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

fn hm(h: u32, m: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, m, 0).unwrap()
}

fn props(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

fn cron(expr: &str) -> cron::Schedule {
    cron::Schedule::from_str(expr).unwrap()
}

// ---- quiet hours ----

#[test]
fn quiet_hours_wrapping_midnight() {
    let quiet = QuietHours { from: hm(21, 0), to: hm(9, 0) };
    let tokyo = Asia::Tokyo;
    // 20:59 JST: outside.
    assert_eq!(quiet.release_at(utc("2026-08-01T20:59:00+09:00"), tokyo), None);
    // 21:00 JST: inside (from is inclusive), released at 09:00 the next day.
    assert_eq!(quiet.release_at(utc("2026-08-01T21:00:00+09:00"), tokyo), Some(utc("2026-08-02T09:00:00+09:00")));
    // 23:30 JST: released the next morning.
    assert_eq!(quiet.release_at(utc("2026-08-01T23:30:00+09:00"), tokyo), Some(utc("2026-08-02T09:00:00+09:00")));
    // 03:00 JST: released the same morning.
    assert_eq!(quiet.release_at(utc("2026-08-02T03:00:00+09:00"), tokyo), Some(utc("2026-08-02T09:00:00+09:00")));
    // 09:00 JST: outside (to is exclusive); noon too.
    assert_eq!(quiet.release_at(utc("2026-08-02T09:00:00+09:00"), tokyo), None);
    assert!(!quiet.contains(utc("2026-08-02T12:00:00+09:00"), tokyo));
    assert!(quiet.contains(utc("2026-08-02T08:59:59+09:00"), tokyo));
}

#[test]
fn quiet_hours_within_one_day() {
    let quiet = QuietHours { from: hm(12, 0), to: hm(13, 30) };
    let tokyo = Asia::Tokyo;
    assert_eq!(quiet.release_at(utc("2026-08-01T11:59:59+09:00"), tokyo), None);
    assert_eq!(quiet.release_at(utc("2026-08-01T12:00:00+09:00"), tokyo), Some(utc("2026-08-01T13:30:00+09:00")));
    assert_eq!(quiet.release_at(utc("2026-08-01T13:29:00+09:00"), tokyo), Some(utc("2026-08-01T13:30:00+09:00")));
    assert_eq!(quiet.release_at(utc("2026-08-01T13:30:00+09:00"), tokyo), None);
    assert_eq!(quiet.release_at(utc("2026-08-01T23:00:00+09:00"), tokyo), None);
}

#[test]
fn quiet_hours_are_local_time_and_dst_safe() {
    let quiet = QuietHours { from: hm(21, 0), to: hm(9, 0) };
    // 09:00 in Tokyo is 00:00 UTC: 23:00 UTC is 08:00 JST, inside.
    assert_eq!(quiet.release_at(utc("2026-08-01T23:00:00Z"), Asia::Tokyo), Some(utc("2026-08-02T00:00:00Z")));
    // New York, the night clocks go forward (8 March 2026): 09:00 EDT is 13:00 UTC.
    assert_eq!(quiet.release_at(utc("2026-03-08T03:00:00Z"), America::New_York), Some(utc("2026-03-08T13:00:00Z")));
    // The night clocks go back (1 November 2026): 09:00 EST is 14:00 UTC.
    assert_eq!(quiet.release_at(utc("2026-11-01T03:00:00Z"), America::New_York), Some(utc("2026-11-01T14:00:00Z")));
}

// ---- cron ----

#[test]
fn daily_nine_am_fires_in_tokyo_time() {
    let schedule = cron("0 0 9 * * *");
    let fires = fires_between(&schedule, Asia::Tokyo, utc("2026-08-01T00:00:00Z"), utc("2026-08-04T00:00:00Z"), 10);
    assert_eq!(fires, vec![utc("2026-08-02T00:00:00Z"), utc("2026-08-03T00:00:00Z"), utc("2026-08-04T00:00:00Z")]);
    // Strictly after `after`, at or before `until`, at most `max`.
    let fires = fires_between(&schedule, Asia::Tokyo, utc("2026-08-01T00:00:00Z"), utc("2026-08-10T00:00:00Z"), 2);
    assert_eq!(fires, vec![utc("2026-08-02T00:00:00Z"), utc("2026-08-03T00:00:00Z")]);
    assert_eq!(next_fire(&schedule, Asia::Tokyo, utc("2026-08-01T23:59:59Z")), Some(utc("2026-08-02T00:00:00Z")));
    assert_eq!(next_fire(&schedule, Asia::Tokyo, utc("2026-08-02T00:00:00Z")), Some(utc("2026-08-03T00:00:00Z")));
    assert_eq!(
        last_fire_at_or_before(&schedule, Asia::Tokyo, utc("2026-08-02T00:00:00Z")),
        Some(utc("2026-08-02T00:00:00Z"))
    );
    assert_eq!(
        last_fire_at_or_before(&schedule, Asia::Tokyo, utc("2026-08-01T23:59:59.999Z")),
        Some(utc("2026-08-01T00:00:00Z"))
    );
}

#[test]
fn day_of_week_numbers_start_at_sunday() {
    // 2026-08-03 is a Monday. In the cron crate 2 = Monday (1 = Sunday), not 1 as in Unix cron.
    let by_number = cron("0 30 10 * * 2");
    let by_name = cron("0 30 10 * * Mon");
    let after = utc("2026-08-01T00:00:00+09:00");
    let expected = Some(utc("2026-08-03T10:30:00+09:00"));
    assert_eq!(next_fire(&by_number, Asia::Tokyo, after), expected);
    assert_eq!(next_fire(&by_name, Asia::Tokyo, after), expected);
    assert_eq!(next_fire(&cron("0 30 10 * * 1"), Asia::Tokyo, after), Some(utc("2026-08-02T10:30:00+09:00")));
}

#[test]
fn monthly_schedule_in_tokyo() {
    let schedule = cron("0 0 10 1 * *");
    let fires = fires_between(&schedule, Asia::Tokyo, utc("2026-08-01T00:00:00Z"), utc("2026-11-01T00:00:00Z"), 10);
    assert_eq!(fires, vec![utc("2026-08-01T01:00:00Z"), utc("2026-09-01T01:00:00Z"), utc("2026-10-01T01:00:00Z")]);
}

#[test]
fn a_repeated_wall_time_fires_once() {
    // 1 November 2026, New York: 01:30 happens twice.
    let schedule = cron("0 30 1 * * *");
    let fires =
        fires_between(&schedule, America::New_York, utc("2026-10-31T12:00:00Z"), utc("2026-11-02T12:00:00Z"), 10);
    assert_eq!(fires, vec![utc("2026-11-01T05:30:00Z"), utc("2026-11-02T06:30:00Z")]);
    assert_eq!(next_fire(&schedule, America::New_York, utc("2026-11-01T05:30:00Z")), Some(utc("2026-11-02T06:30:00Z")));
}

// ---- catch-up ----

#[test]
fn catch_up_with_nothing_missed() {
    let schedule = cron("0 0 9 * * *");
    let since = utc("2026-08-01T09:00:00+09:00");
    // Before the next fire: nothing to do.
    assert_eq!(
        catch_up(&schedule, Asia::Tokyo, since, utc("2026-08-02T08:59:59+09:00"), Duration::hours(1)),
        CatchUp::default()
    );
    // Exactly at the next fire: it runs.
    let result = catch_up(&schedule, Asia::Tokyo, since, utc("2026-08-02T09:00:00+09:00"), Duration::hours(1));
    assert_eq!(result, CatchUp { run: Some(utc("2026-08-02T09:00:00+09:00")), missed: vec![] });
}

#[test]
fn catch_up_one_missed_within_grace_runs() {
    let schedule = cron("0 0 9 * * *");
    let since = utc("2026-08-01T09:00:00+09:00");
    let result = catch_up(&schedule, Asia::Tokyo, since, utc("2026-08-02T09:45:00+09:00"), Duration::hours(1));
    assert_eq!(result, CatchUp { run: Some(utc("2026-08-02T09:00:00+09:00")), missed: vec![] });
    // The same fire past the grace is missed, not run.
    let result = catch_up(&schedule, Asia::Tokyo, since, utc("2026-08-02T10:00:01+09:00"), Duration::hours(1));
    assert_eq!(result, CatchUp { run: None, missed: vec![utc("2026-08-02T09:00:00+09:00")] });
}

#[test]
fn catch_up_many_missed() {
    let schedule = cron("0 0 9 * * *");
    let since = utc("2026-08-01T09:00:00+09:00");
    // Down for three days, back 30 minutes after the latest fire: only the latest runs.
    let result = catch_up(&schedule, Asia::Tokyo, since, utc("2026-08-04T09:30:00+09:00"), Duration::hours(1));
    assert_eq!(result.run, Some(utc("2026-08-04T09:00:00+09:00")));
    assert_eq!(result.missed, vec![utc("2026-08-02T09:00:00+09:00"), utc("2026-08-03T09:00:00+09:00")]);
    // Back at noon, beyond the grace: everything is missed.
    let result = catch_up(&schedule, Asia::Tokyo, since, utc("2026-08-04T12:00:00+09:00"), Duration::hours(1));
    assert_eq!(result.run, None);
    assert_eq!(
        result.missed,
        vec![utc("2026-08-02T09:00:00+09:00"), utc("2026-08-03T09:00:00+09:00"), utc("2026-08-04T09:00:00+09:00")]
    );
}

#[test]
fn catch_up_after_a_long_outage_keeps_the_newest_missed() {
    let schedule = cron("0 * * * * *"); // every minute
    let since = utc("2026-08-01T00:00:00Z");
    let now = utc("2026-08-08T00:00:30Z"); // a week: 10,080 fires
    let result = catch_up(&schedule, Asia::Tokyo, since, now, Duration::minutes(5));
    assert_eq!(result.run, Some(utc("2026-08-08T00:00:00Z")));
    assert_eq!(result.missed.len(), MAX_MISSED);
    assert_eq!(result.missed.last(), Some(&utc("2026-08-07T23:59:00Z")));
    assert!(result.missed.windows(2).all(|w| w[0] < w[1]));
}

// ---- event timing ----

#[test]
fn send_at_with_rfc3339_and_negative_offset() {
    let timing = Timing::At { property: "reserved_at".into(), offset: Duration::days(-1) };
    let properties = props(json!({"reserved_at": "2026-08-12T13:13:20+09:00"}));
    assert_eq!(
        timing.send_at(utc("2026-08-01T04:13:20Z"), &properties, Asia::Tokyo),
        Ok(utc("2026-08-11T13:13:20+09:00"))
    );
}

#[test]
fn send_at_with_a_bare_date_is_local_midnight() {
    let timing = Timing::At { property: "starts_on".into(), offset: Duration::hours(-3) };
    let properties = props(json!({"starts_on": "2026-08-12"}));
    // Midnight in Tokyo on 12 Aug, minus 3 hours = 21:00 JST on 11 Aug.
    assert_eq!(
        timing.send_at(utc("2026-08-01T00:00:00Z"), &properties, Asia::Tokyo),
        Ok(utc("2026-08-11T21:00:00+09:00"))
    );
    let timing = Timing::At { property: "starts_on".into(), offset: Duration::zero() };
    assert_eq!(timing.send_at(utc("2026-08-01T00:00:00Z"), &properties, Asia::Tokyo), Ok(utc("2026-08-11T15:00:00Z")));
}

#[test]
fn send_at_delay_and_immediately() {
    let occurred = utc("2026-08-01T00:00:00Z");
    assert_eq!(Timing::Immediately.send_at(occurred, &Map::new(), Asia::Tokyo), Ok(occurred));
    assert_eq!(
        Timing::Delay(Duration::hours(2)).send_at(occurred, &Map::new(), Asia::Tokyo),
        Ok(utc("2026-08-01T02:00:00Z"))
    );
}

#[test]
fn send_at_errors_when_the_property_is_missing_or_not_a_time() {
    let timing = Timing::At { property: "reserved_at".into(), offset: Duration::days(-1) };
    let occurred = utc("2026-08-01T00:00:00Z");
    let missing = timing.send_at(occurred, &Map::new(), Asia::Tokyo).unwrap_err();
    assert!(missing.contains("missing"), "{missing}");
    for bad in [json!("next tuesday"), json!(1_786_000_000), json!("2026-8-12")] {
        let error = timing.send_at(occurred, &props(json!({"reserved_at": bad})), Asia::Tokyo).unwrap_err();
        assert!(error.contains("not a time"), "{error}");
    }
}

// ---- unless ----

#[test]
fn unless_cancels_only_a_matching_later_event() {
    let unless = Unless { event: "reservation_cancelled".into(), match_props: vec!["reservation_id".into()] };
    let created_at = utc("2026-08-01T10:00:00Z");
    let now = utc("2026-08-11T04:00:00Z");
    let trigger = props(json!({"reservation_id": "R1", "reserved_at": "2026-08-12T13:00:00+09:00"}));
    let same = props(json!({"reservation_id": "R1"}));
    let other = props(json!({"reservation_id": "R2"}));
    let cancels = |kind: &str, at: &str, candidate: &Map<String, Value>| {
        unless.cancels(created_at, &trigger, kind, utc(at), candidate, now)
    };
    assert!(cancels("reservation_cancelled", "2026-08-05T00:00:00Z", &same));
    // At the trigger's instant and at `now`: both bounds inclusive.
    assert!(cancels("reservation_cancelled", "2026-08-01T10:00:00Z", &same));
    assert!(cancels("reservation_cancelled", "2026-08-11T04:00:00Z", &same));
    // Another reservation, another type, before the trigger, after now, or a missing property: no.
    assert!(!cancels("reservation_cancelled", "2026-08-05T00:00:00Z", &other));
    assert!(!cancels("purchase", "2026-08-05T00:00:00Z", &same));
    assert!(!cancels("reservation_cancelled", "2026-08-01T09:59:59Z", &same));
    assert!(!cancels("reservation_cancelled", "2026-08-11T04:00:01Z", &same));
    assert!(!cancels("reservation_cancelled", "2026-08-05T00:00:00Z", &Map::new()));
    // No type coercion.
    let numeric = props(json!({"reservation_id": 1}));
    let text = props(json!({"reservation_id": "1"}));
    assert!(!unless.cancels(created_at, &numeric, "reservation_cancelled", utc("2026-08-05T00:00:00Z"), &text, now));
    // Without match properties any later event of the type cancels.
    let any = Unless { event: "unfollow".into(), match_props: vec![] };
    assert!(any.cancels(created_at, &trigger, "unfollow", utc("2026-08-02T00:00:00Z"), &Map::new(), now));
}
