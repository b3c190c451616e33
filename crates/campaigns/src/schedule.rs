//! Cron schedules in the configured timezone, and the catch-up rule after
//! downtime.
//!
//! Expressions are those of the `cron` crate: **six or seven fields, with
//! seconds first**: `sec min hour day-of-month month day-of-week [year]`, e.g.
//! `"0 0 9 * * *"` = every day at 09:00:00. Unlike Unix cron, **day-of-week
//! numbers run 1–7 from Sunday** (1 = Sunday, 2 = Monday, … 7 = Saturday; 0
//! is refused), so prefer names: `"0 0 10 * * Mon-Fri"`.
//!
//! Daylight-saving time: a wall-clock time that a clock change repeats fires
//! once (its first occurrence); one that a clock change skips does not fire
//! that day (the `cron` crate's behaviour). Asia/Tokyo has no DST.

use chrono::{DateTime, Duration, SubsecRound, TimeZone, Utc};
use chrono_tz::Tz;

/// At most this many missed fires are reported by [`catch_up`] (the newest).
pub const MAX_MISSED: usize = 1_000;

/// Whether `fire` is the first instant with its local wall time (a fire in
/// the second pass of a repeated hour is not).
fn is_first_occurrence(fire: &DateTime<Tz>, tz: Tz) -> bool {
    tz.from_local_datetime(&fire.naive_local()).earliest().is_none_or(|first| first == *fire)
}

/// Fire times strictly after `after`, ascending, in `tz`.
fn fires_after(schedule: &cron::Schedule, tz: Tz, after: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
    schedule
        .after(&after.with_timezone(&tz))
        .filter(move |fire| is_first_occurrence(fire, tz))
        .map(|fire| fire.with_timezone(&Utc))
        .filter(move |fire| *fire > after)
}

/// Fire times at or before `until`, descending, in `tz`.
fn fires_until_descending(
    schedule: &cron::Schedule,
    tz: Tz,
    until: DateTime<Utc>,
) -> impl Iterator<Item = DateTime<Utc>> + '_ {
    // Fires fall on whole seconds: those at or before `until` are strictly
    // before the next whole second.
    let start = until.trunc_subsecs(0) + Duration::seconds(1);
    schedule
        .after(&start.with_timezone(&tz))
        .rev()
        .filter(move |fire| is_first_occurrence(fire, tz))
        .map(|fire| fire.with_timezone(&Utc))
        .filter(move |fire| *fire <= until)
}

/// Fire times strictly after `after` and at or before `until`, ascending, at
/// most `max` of them, in `tz` (see the module docs for the expression
/// syntax: seconds first, day-of-week 1 = Sunday).
pub fn fires_between(
    schedule: &cron::Schedule,
    tz: Tz,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
    max: usize,
) -> Vec<DateTime<Utc>> {
    if until <= after {
        return Vec::new();
    }
    fires_after(schedule, tz, after).take_while(|fire| *fire <= until).take(max).collect()
}

/// The first fire strictly after `after`, if the schedule ever fires again.
pub fn next_fire(schedule: &cron::Schedule, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    fires_after(schedule, tz, after).next()
}

/// The latest fire at or before `at`, if any.
pub fn last_fire_at_or_before(schedule: &cron::Schedule, tz: Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    fires_until_descending(schedule, tz, at).next()
}

/// What to do about fires that came due while nothing ran.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CatchUp {
    /// The one fire to run now: the latest due fire, when it is at most
    /// `grace` old.
    pub run: Option<DateTime<Utc>>,
    /// Every other due fire, ascending (to record as missed, not to send);
    /// the newest [`MAX_MISSED`] when there are more.
    pub missed: Vec<DateTime<Utc>>,
}

/// The catch-up rule after downtime: of the fires strictly after `since`
/// (the last fire handled, or when the campaign was enabled if it never
/// fired) and at or before `now`, only the latest runs, and only if it is at
/// most `grace` old (`now - fire <= grace`); the others are missed. Called in
/// normal operation it returns the one due fire as `run` and nothing missed.
pub fn catch_up(
    schedule: &cron::Schedule,
    tz: Tz,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: Duration,
) -> CatchUp {
    if now <= since {
        return CatchUp::default();
    }
    let mut due: Vec<DateTime<Utc>> =
        fires_until_descending(schedule, tz, now).take_while(|fire| *fire > since).take(MAX_MISSED + 1).collect();
    due.reverse();
    let Some(&latest) = due.last() else {
        return CatchUp::default();
    };
    let run = (now - latest <= grace).then_some(latest);
    if run.is_some() {
        due.pop();
    }
    if due.len() > MAX_MISSED {
        due.drain(..due.len() - MAX_MISSED);
    }
    CatchUp { run, missed: due }
}
