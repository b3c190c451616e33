//! What a campaign file means once validated, and the time rules that go
//! with it: event timing, `unless` cancellation and quiet hours.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use renkei_segments::calendar::parse_time;
use serde_json::{Map, Value};
use std::path::PathBuf;

/// One campaign (one YAML file), validated against the segments and templates.
#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    /// `[a-z0-9_]{1,64}`, unique across files.
    pub id: String,
    pub name: String,
    /// Optional free text.
    pub description: Option<String>,
    /// The file the campaign was read from.
    pub file: PathBuf,
    pub trigger: Trigger,
    /// Optional extra filter: the user must also be in this segment at send time.
    pub audience: Option<String>,
    /// 1 to 5 messages, sent together in one request; with `variants`,
    /// every variant's messages one after the other (each variant names its
    /// range).
    pub messages: Vec<MessageSpec>,
    /// A/B/n arms in place of `messages`, weights summing to 100; empty: the
    /// campaign sends `messages` to everyone.
    pub variants: Vec<Variant>,
    /// A step sequence (ステップ配信) in place of `messages`: each step one
    /// delivery per trigger instance and user. Empty: one delivery.
    pub steps: Vec<Step>,
    /// What ends a user's sequence before a later step.
    pub exit: Option<Exit>,
    /// Per user, this campaign.
    pub frequency_cap: Option<FrequencyCap>,
    /// Due sends inside these hours are deferred to their end, never dropped.
    pub quiet_hours: Option<QuietHours>,
    /// What counts as a conversion (see [`crate::outcome`]).
    pub goal: Option<Goal>,
    /// The share of sendable recipients kept as a control group.
    pub holdout: Option<Holdout>,
}

/// `goal:`: a recipient converts when an event of `event` passing `filters`
/// occurs after its exposure and within `within`.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    pub event: String,
    pub filters: Vec<renkei_segments::PropertyFilter>,
    pub within: Duration,
    /// The first converting event's numeric property (dotted for nested),
    /// summed as the conversion value.
    pub value: Option<String>,
}

impl Goal {
    /// The goal event this is, if `properties` pass the goal's `where` (at
    /// `now`, in `tz`), with its value.
    pub fn goal_event(
        &self,
        line_user_id: &str,
        occurred_at: DateTime<Utc>,
        properties: &Map<String, Value>,
        now: DateTime<Utc>,
        tz: Tz,
    ) -> Option<crate::outcome::GoalEvent> {
        renkei_segments::properties_match(&self.filters, properties, now, tz).then(|| crate::outcome::GoalEvent {
            line_user_id: line_user_id.to_string(),
            occurred_at,
            value: self.value.as_deref().and_then(|p| lookup(properties, p)).and_then(Value::as_f64),
        })
    }
}

/// The `customAggregationUnits` name of a campaign (and step) at LINE:
/// `^[a-zA-Z0-9_]{1,30}$`. The id itself when it fits, else its first 21
/// characters, `_` and 8 hex digits of a hash of the whole, so that long
/// ids sharing a prefix stay apart.
pub fn aggregation_unit(campaign_id: &str, step: Option<&str>) -> String {
    let whole = match step {
        Some(step) => format!("{campaign_id}_{step}"),
        None => campaign_id.to_string(),
    };
    if whole.len() <= 30 {
        return whole;
    }
    let hash = whole.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{}_{:08x}", &whole[..21], hash as u32)
}

/// One arm of an A/B/n test: its share of recipients and its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// `[a-z0-9_]{1,32}`, unique in the campaign.
    pub id: String,
    /// Percent of the recipients (the campaign's weights sum to 100).
    pub weight: u32,
    /// Its messages: `Campaign::messages[messages]`.
    pub messages: std::ops::Range<usize>,
}

/// One step of a sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// `[a-z0-9_]{1,32}`, unique in the campaign; running sequences keep the
    /// steps whose id is still in the file.
    pub id: String,
    /// After the previous step (or the trigger).
    pub wait: Duration,
    /// Then the first such local time at or after, in the timezone.
    pub at: Option<NaiveTime>,
    /// Skip this step (not the sequence) unless the user is in this segment then.
    pub if_segment: Option<String>,
    /// Its messages, `Campaign::messages[messages]`, or its variants'.
    pub messages: std::ops::Range<usize>,
    pub variants: Vec<Variant>,
}

/// `exit:`: any one ends a user's sequence before a later step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exit {
    /// The user converted (the campaign's goal) since the sequence started.
    pub goal: bool,
    /// The user is no longer in this segment.
    pub segment_exited: Option<String>,
    /// Such an event happened since the sequence started (as `unless`).
    pub event: Option<Unless>,
}

impl Campaign {
    /// The variant `line_user_id` gets (a stable hash of campaign and user,
    /// independent of the holdout's), or `None` without variants.
    pub fn variant_for(&self, line_user_id: &str) -> Option<&Variant> {
        pick_variant(&self.id, &self.variants, line_user_id)
    }

    /// The messages `line_user_id` gets: its variant's, or all of them.
    pub fn messages_for(&self, line_user_id: Option<&str>) -> (Option<&Variant>, &[MessageSpec]) {
        let (variant, range) = self.message_range(None, line_user_id);
        (variant, &self.messages[range])
    }

    /// Where in `messages` the messages of `step` (or of a campaign without
    /// steps) for `line_user_id` are, with the variant chosen.
    pub fn message_range(
        &self,
        step: Option<usize>,
        line_user_id: Option<&str>,
    ) -> (Option<&Variant>, std::ops::Range<usize>) {
        let (variants, all) = match step.and_then(|k| self.steps.get(k)) {
            Some(step) => (&step.variants, step.messages.clone()),
            None => (&self.variants, 0..self.messages.len()),
        };
        let variant = line_user_id.and_then(|u| pick_variant(&self.id, variants, u)).or(variants.first());
        match variant {
            Some(variant) => (Some(variant), variant.messages.clone()),
            None => (None, all),
        }
    }

    /// When each step is due for a sequence started at `start`: the previous
    /// step's time (or `start`) plus the step's `wait`, then its `at` in `tz`.
    pub fn step_times(&self, start: DateTime<Utc>, tz: Tz) -> Vec<DateTime<Utc>> {
        let mut at = start;
        self.steps
            .iter()
            .map(|step| {
                at = at.checked_add_signed(step.wait).unwrap_or(DateTime::<Utc>::MAX_UTC);
                if let Some(time) = step.at {
                    at = next_local_time(at, time, tz);
                }
                at
            })
            .collect()
    }

    /// The step of this id, with its place.
    pub fn step(&self, id: &str) -> Option<(usize, &Step)> {
        self.steps.iter().enumerate().find(|(_, s)| s.id == id)
    }
}

/// The first instant at or after `after` whose local time in `tz` is `time`.
pub fn next_local_time(after: DateTime<Utc>, time: NaiveTime, tz: Tz) -> DateTime<Utc> {
    let date = after.with_timezone(&tz).date_naive();
    [Some(date), date.succ_opt()]
        .into_iter()
        .flatten()
        .filter_map(|d| local_instant_at_or_after(d, time, tz, after))
        .find(|t| *t >= after)
        .unwrap_or(after)
}

fn pick_variant<'v>(campaign_id: &str, variants: &'v [Variant], line_user_id: &str) -> Option<&'v Variant> {
    let share = share_of(&["variant", campaign_id, line_user_id]);
    let mut upper = 0u64;
    for variant in variants {
        upper += u64::from(variant.weight) * 100;
        if share < upper {
            return Some(variant);
        }
    }
    variants.last()
}

/// `holdout: N%`, in hundredths of a percent (`10%` is 1,000; at most 50 %).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holdout {
    pub basis_points: u32,
}

impl Holdout {
    /// At most 50 %: a control group larger than the treated one.
    pub const MAX_BASIS_POINTS: u32 = 5_000;

    /// Whether `line_user_id` is in this campaign's control group: a stable
    /// hash of (campaign, user), the same on every instance and run.
    pub fn holds_out(&self, campaign_id: &str, line_user_id: &str) -> bool {
        share_of(&["holdout", campaign_id, line_user_id]) < u64::from(self.basis_points)
    }
}

/// A stable number in `0..10_000` for `parts` (FNV-1a 64 over the parts
/// joined by NUL): holdouts and arms use different first parts, so the two
/// assignments are independent.
pub(crate) fn share_of(parts: &[&str]) -> u64 {
    ((u128::from(stable_hash(parts)) * 10_000) >> 64) as u64
}

/// FNV-1a 64 over `parts` joined by NUL, finished with MurmurHash3's fmix64.
fn stable_hash(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        let separator: &[u8] = if i == 0 { b"" } else { b"\0" };
        for &b in separator.iter().chain(part.as_bytes()) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    // FNV leaves a last byte's change in the low bits: finish with
    // MurmurHash3's fmix64 so that every bit counts.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    hash
}

/// One Flex message: `templates/<template>.json.hbs` renders the `contents`,
/// `alt_text` (a Handlebars template too, not JSON-escaped) the `altText`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSpec {
    pub template: String,
    pub alt_text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// On entering a segment (entries after the campaign is enabled only).
    SegmentEntered { segment: String },
    /// At each fire of a cron expression (with seconds, in the configured
    /// timezone), to the members of `audience` at that time.
    Schedule { expr: String, schedule: cron::Schedule, audience: String },
    /// On an event of `event_type`, at a time relative to it, unless a
    /// cancelling event has arrived by send time.
    /// Only events whose properties pass `filters` (`where`, as in segments) trigger it.
    Event { event_type: String, timing: Timing, unless: Option<Unless>, filters: Vec<renkei_segments::PropertyFilter> },
    /// On an event of `event_type` passing `filters` (a restock), to every
    /// user with an event of [`FanoutTarget`] matching it (who favourited
    /// that SKU lately): once per user and window (see [`FanoutTarget`]).
    Fanout { event_type: String, filters: Vec<renkei_segments::PropertyFilter>, to: FanoutTarget },
}

impl Trigger {
    /// Whether an event with `properties` passes an event trigger's `where`
    /// (at `now`, in `tz`); other triggers take no events.
    pub fn takes_event(&self, properties: &Map<String, Value>, now: DateTime<Utc>, tz: Tz) -> bool {
        match self {
            Trigger::Event { filters, .. } | Trigger::Fanout { filters, .. } => {
                renkei_segments::properties_match(filters, properties, now, tz)
            }
            _ => false,
        }
    }

    /// The segments this trigger names (entry segment or schedule audience).
    pub fn segment(&self) -> Option<&str> {
        match self {
            Trigger::SegmentEntered { segment } => Some(segment),
            Trigger::Schedule { audience, .. } => Some(audience),
            Trigger::Event { .. } | Trigger::Fanout { .. } => None,
        }
    }

    /// The type of the events that trigger it (event and fan-out triggers).
    pub fn event_type(&self) -> Option<&str> {
        match self {
            Trigger::Event { event_type, .. } | Trigger::Fanout { event_type, .. } => Some(event_type),
            _ => None,
        }
    }
}

/// `fanout.to`: who a fan-out reaches. A user is reached when one of their
/// events (by LINE user, or by a member linked to one) has a type in
/// `event_types`, occurred in `(trigger − within, trigger]`, and carries
/// every `match_props` property as a string equal to the trigger event's.
///
/// Once per window: the first trigger event with given match values opens a
/// window of `within`; later ones with the same values inside it share its
/// trigger key, so a user is sent at most once per window (users who
/// qualified since are sent at the repeat). A trigger at or after the
/// window's end opens the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutTarget {
    /// One or more event types (`favorite`, or `[favorite, view]`).
    pub event_types: Vec<String>,
    /// Property names (dotted for nested, `[A-Za-z0-9_]` segments), at least one.
    pub match_props: Vec<String>,
    /// How far back a user's event counts, and the once-per window.
    pub within: Duration,
}

impl FanoutTarget {
    /// The trigger event's value of each match property, in order, or the
    /// first property that is missing or not a string.
    pub fn match_values(&self, properties: &Map<String, Value>) -> Result<Vec<(String, String)>, String> {
        self.match_props
            .iter()
            .map(|name| match lookup(properties, name) {
                Some(Value::String(value)) => Ok((name.clone(), value.clone())),
                _ => Err(name.clone()),
            })
            .collect()
    }

    /// A stable 64-bit name of the match values (for trigger keys and the
    /// window's cursor): the same values, the same key, on every instance.
    pub fn values_key(values: &[(String, String)]) -> String {
        let parts: Vec<&str> = values.iter().flat_map(|(name, value)| [name.as_str(), value.as_str()]).collect();
        format!("{:016x}", stable_hash(&parts))
    }
}

/// When an event-triggered campaign sends, relative to its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timing {
    /// As soon as the event arrives.
    Immediately,
    /// `occurred_at` + this (never negative).
    Delay(Duration),
    /// The time in the event's `property` + `offset` (may be negative: `-1d`
    /// is the day before).
    At { property: String, offset: Duration },
}

impl Timing {
    /// When to send for an event: `occurred_at` (+ delay), or the property's
    /// time + offset. The property is RFC 3339, or `YYYY-MM-DD` meaning local
    /// midnight in `tz`; a dotted name reaches into nested objects. `Err` with
    /// a message when the property is missing or not a time.
    pub fn send_at(
        &self,
        occurred_at: DateTime<Utc>,
        properties: &Map<String, Value>,
        tz: Tz,
    ) -> Result<DateTime<Utc>, String> {
        match self {
            Timing::Immediately => Ok(occurred_at),
            Timing::Delay(delay) => {
                occurred_at.checked_add_signed(*delay).ok_or_else(|| "send time out of range".to_string())
            }
            Timing::At { property, offset } => {
                let value =
                    lookup(properties, property).ok_or_else(|| format!("event property `{property}` is missing"))?;
                let text = value.as_str().ok_or_else(|| {
                    format!("event property `{property}` is not a time (expected RFC 3339 or YYYY-MM-DD)")
                })?;
                let at = parse_time(text, tz).ok_or_else(|| {
                    format!("event property `{property}` = {text:?} is not a time (expected RFC 3339 or YYYY-MM-DD)")
                })?;
                at.checked_add_signed(*offset).ok_or_else(|| "send time out of range".to_string())
            }
        }
    }
}

/// Cancels a pending event-triggered send: `unless: {event, match: [..]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unless {
    pub event: String,
    /// Property names (dotted for nested) that must be present and equal on
    /// both events.
    pub match_props: Vec<String>,
}

impl Unless {
    /// Whether `candidate` cancels the send for the trigger event: of type
    /// `self.event`, occurred at or after the trigger event and at or before
    /// `now`, and carrying, for every match property, a value present on both
    /// events and equal (no type coercion: `"1"` ≠ `1`).
    pub fn cancels(
        &self,
        trigger_occurred_at: DateTime<Utc>,
        trigger_props: &Map<String, Value>,
        candidate_type: &str,
        candidate_at: DateTime<Utc>,
        candidate_props: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> bool {
        candidate_type == self.event
            && candidate_at >= trigger_occurred_at
            && candidate_at <= now
            && self.match_props.iter().all(|name| match (lookup(trigger_props, name), lookup(candidate_props, name)) {
                (Some(a), Some(b)) => !a.is_null() && a == b,
                _ => false,
            })
    }
}

/// A property by name; `a.b` reaches into nested objects.
pub(crate) fn lookup<'v>(properties: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
    if let Some(value) = properties.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut current = properties.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// At most `max` sends of this campaign per user in any window of `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrequencyCap {
    pub max: u32,
    pub per: Duration,
}

/// Local hours `[from, to)` in which nothing is sent; the window wraps
/// midnight when `from > to` (`21:00`–`09:00`). `from == to` is refused at
/// load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub from: NaiveTime,
    pub to: NaiveTime,
}

impl QuietHours {
    /// Whether `at` falls inside the quiet hours, in `tz`.
    pub fn contains(&self, at: DateTime<Utc>, tz: Tz) -> bool {
        self.release_at(at, tz).is_some()
    }

    /// `None` when `at` is outside the quiet hours; else the instant they end:
    /// local `to` that day, or the next day when the window wraps midnight and
    /// `at` is before midnight. DST-safe: a `to` that a clock change skips
    /// becomes the first local time after the gap; a repeated one, its first
    /// occurrence after `at`.
    pub fn release_at(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&tz);
        let time = local.time();
        let date = local.date_naive();
        let release_date = if self.from < self.to {
            (self.from <= time && time < self.to).then_some(date)?
        } else if self.from > self.to {
            if time >= self.from {
                date.succ_opt()?
            } else if time < self.to {
                date
            } else {
                return None;
            }
        } else {
            return None;
        };
        local_instant_at_or_after(release_date, self.to, tz, at)
    }
}

/// The instant local wall time `date` `time` happens in `tz`: when DST
/// repeats it, the first occurrence after `not_before`; when DST skips it,
/// the end of the gap (the first instant whose local time is past it).
fn local_instant_at_or_after(
    date: NaiveDate,
    time: NaiveTime,
    tz: Tz,
    not_before: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let wall = date.and_time(time);
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(earlier, later) => {
            let (earlier, later) = (earlier.with_timezone(&Utc), later.with_timezone(&Utc));
            Some(if earlier > not_before { earlier } else { later })
        }
        LocalResult::None => gap_end(wall, tz),
    }
}

/// The first instant whose local time in `tz` is at or after `wall`, found by
/// bisection (local time only moves forward within two days of a gap).
fn gap_end(wall: NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    let as_utc = Utc.from_utc_datetime(&wall).timestamp();
    // No offset exceeds ±26h, so local time is before `wall` at `lo` and after it at `hi`.
    let (mut lo, mut hi) = (as_utc - 26 * 3_600, as_utc + 26 * 3_600);
    let local_at = |seconds: i64| DateTime::from_timestamp(seconds, 0).map(|t| t.with_timezone(&tz).naive_local());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_at(mid)? >= wall {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono_tz::{America, Asia};
    use serde_json::json;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn hm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }

    #[test]
    fn lookup_reaches_nested_properties() {
        let props = json!({"a": {"b": 1}, "c.d": 2}).as_object().unwrap().clone();
        assert_eq!(lookup(&props, "a.b"), Some(&json!(1)));
        assert_eq!(lookup(&props, "c.d"), Some(&json!(2)));
        assert_eq!(lookup(&props, "a.x"), None);
    }

    #[test]
    fn quiet_hours_release_skips_a_dst_gap() {
        // New York: 2026-03-08 02:00 local does not exist (clocks go 02:00 -> 03:00).
        let quiet = QuietHours { from: hm(22, 0), to: hm(2, 30) };
        let at = utc("2026-03-08T06:00:00Z"); // 01:00 EST
        let release = quiet.release_at(at, America::New_York).unwrap();
        assert_eq!(release, utc("2026-03-08T07:00:00Z")); // 03:00 EDT, the end of the gap
    }

    #[test]
    fn quiet_hours_in_tokyo_wrap_midnight() {
        let quiet = QuietHours { from: hm(21, 0), to: hm(9, 0) };
        // 23:00 JST on 1 Aug -> 09:00 JST on 2 Aug.
        assert_eq!(quiet.release_at(utc("2026-08-01T14:00:00Z"), Asia::Tokyo), Some(utc("2026-08-02T00:00:00Z")));
    }
}

#[cfg(test)]
mod holdout_tests {
    use super::*;

    #[test]
    fn holdout_shares_are_within_binomial_bounds_and_stable() {
        let users: Vec<String> = (0..100_000).map(|i| format!("U{i:032x}")).collect();
        for basis_points in [500u32, 1_000, 5_000] {
            let holdout = Holdout { basis_points };
            let held = users.iter().filter(|u| holdout.holds_out("trial_followup", u)).count() as f64;
            let (n, p) = (users.len() as f64, f64::from(basis_points) / 10_000.0);
            // Five standard deviations: a false alarm once in ~3.5 million runs.
            let sd = (n * p * (1.0 - p)).sqrt();
            assert!((held - n * p).abs() < 5.0 * sd, "{basis_points} bp: {held} of {n}");
        }
        // The same answer every time, and another campaign splits otherwise.
        let holdout = Holdout { basis_points: 1_000 };
        let a: Vec<bool> = users.iter().take(1_000).map(|u| holdout.holds_out("a", u)).collect();
        let again: Vec<bool> = users.iter().take(1_000).map(|u| holdout.holds_out("a", u)).collect();
        let b: Vec<bool> = users.iter().take(1_000).map(|u| holdout.holds_out("b", u)).collect();
        assert_eq!(a, again);
        assert_ne!(a, b);
    }

    #[test]
    fn step_times_add_waits_then_move_to_the_next_local_time() {
        let at = |h, m| Some(NaiveTime::from_hms_opt(h, m, 0).expect("time"));
        let step = |id: &str, wait: Duration, time| Step {
            id: id.into(),
            wait,
            at: time,
            if_segment: None,
            messages: 0..0,
            variants: Vec::new(),
        };
        let mut campaign = sample_campaign();
        campaign.steps = vec![
            step("now", Duration::zero(), None),
            step("tonight", Duration::minutes(30), at(23, 30)),
            step("after_midnight", Duration::zero(), at(0, 15)),
            step("a_day_later", Duration::days(1), at(0, 15)),
            step("next_morning", Duration::zero(), at(10, 0)),
            step("past_the_time", Duration::minutes(1), at(10, 0)),
        ];
        let tz = chrono_tz::Asia::Tokyo;
        let local = |d, h, m| tz.with_ymd_and_hms(2026, 12, d, h, m, 0).single().expect("local").with_timezone(&Utc);
        // Triggered on 1 December at 22:40 in Tokyo.
        assert_eq!(
            campaign.step_times(local(1, 22, 40), tz),
            vec![
                local(1, 22, 40),
                local(1, 23, 30),
                local(2, 0, 15),
                local(3, 0, 15),
                local(3, 10, 0),
                local(4, 10, 0),
            ]
        );
    }

    fn sample_campaign() -> Campaign {
        Campaign {
            id: "c".into(),
            name: "c".into(),
            description: None,
            file: PathBuf::from("c.yaml"),
            trigger: Trigger::SegmentEntered { segment: "s".into() },
            audience: None,
            messages: Vec::new(),
            variants: Vec::new(),
            frequency_cap: None,
            quiet_hours: None,
            goal: None,
            holdout: None,
            steps: Vec::new(),
            exit: None,
        }
    }

    #[test]
    fn aggregation_units_fit_lines_pattern() {
        let valid =
            |u: &str| !u.is_empty() && u.len() <= 30 && u.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        assert_eq!(aggregation_unit("cart_reminder", None), "cart_reminder");
        assert_eq!(aggregation_unit("trial_followup", Some("day3")), "trial_followup_day3");
        let long = "a_very_long_campaign_identifier_for_spring_2026";
        let (a, b) = (aggregation_unit(long, None), aggregation_unit(long, Some("day7")));
        assert!(valid(&a) && valid(&b) && a != b && a.len() == 30, "{a} {b}");
        assert_eq!(a, aggregation_unit(long, None), "stable");
    }

    #[test]
    fn variant_shares_follow_the_weights_independently_of_the_holdout() {
        let campaign = Campaign {
            variants: vec![
                Variant { id: "a".into(), weight: 20, messages: 0..0 },
                Variant { id: "b".into(), weight: 80, messages: 0..0 },
            ],
            holdout: Some(Holdout { basis_points: 5_000 }),
            ..sample_campaign()
        };
        let n = 100_000usize;
        let (mut a, mut held, mut a_and_held) = (0f64, 0f64, 0f64);
        for i in 0..n {
            let user = format!("U{i:032x}");
            let in_a = campaign.variant_for(&user).map(|v| v.id.as_str()) == Some("a");
            let out = campaign.holdout.is_some_and(|h| h.holds_out("c", &user));
            a += f64::from(u8::from(in_a));
            held += f64::from(u8::from(out));
            a_and_held += f64::from(u8::from(in_a && out));
        }
        let n = n as f64;
        let within = |count: f64, p: f64| (count - n * p).abs() < 5.0 * (n * p * (1.0 - p)).sqrt();
        assert!(within(a, 0.2), "variant a: {a}");
        assert!(within(held, 0.5), "held out: {held}");
        // Independent: a fifth of the held-out users are in variant a.
        assert!(within(a_and_held, 0.1), "both: {a_and_held}");
    }
}
