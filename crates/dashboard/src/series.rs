//! Days from the store's hourly counts (`dashboard_counts`), in the
//! dashboard's timezone: sums per day for flows (sends, entries, links),
//! and levels at each day's end for counts kept as changes (friends,
//! blocked, linked, a segment's size), walked back from today's level.

use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use renkei_store::HourCount;

/// The last `days` local dates, oldest first, today last.
pub fn dates(now: DateTime<Utc>, tz: Tz, days: u32) -> Vec<NaiveDate> {
    let today = now.with_timezone(&tz).date_naive();
    (0..days).rev().filter_map(|back| today.checked_sub_days(Days::new(u64::from(back)))).collect()
}

/// The instant a local date starts (its first instant that exists).
pub fn day_start(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    match tz.from_local_datetime(&midnight) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => t.to_utc(),
        // A gap at midnight (a DST change): the hour after.
        chrono::LocalResult::None => tz
            .from_local_datetime(&(midnight + chrono::Duration::hours(1)))
            .earliest()
            .map_or_else(|| Utc.from_utc_datetime(&midnight), |t| t.to_utc()),
    }
}

/// Where the first of the last `days` days starts: read the counts from here.
pub fn since(now: DateTime<Utc>, tz: Tz, days: u32) -> DateTime<Utc> {
    dates(now, tz, days).first().map_or(now, |first| day_start(*first, tz))
}

/// The local date an hour's count belongs to.
fn date_of(count: &HourCount, tz: Tz) -> NaiveDate {
    count.hour.with_timezone(&tz).date_naive()
}

/// Each day's sum of the counts (those of `key` only when given).
pub fn daily_sums(counts: &[HourCount], key: Option<&str>, dates: &[NaiveDate], tz: Tz) -> Vec<i64> {
    dates
        .iter()
        .map(|date| {
            counts.iter().filter(|c| key.is_none_or(|k| c.key == k) && date_of(c, tz) == *date).map(|c| c.n).sum()
        })
        .collect()
}

/// The level at each day's end, from the level `now` less every change
/// counted after that day (`counts` must reach back to the first day).
pub fn daily_levels(counts: &[HourCount], current: i64, dates: &[NaiveDate], tz: Tz) -> Vec<i64> {
    dates
        .iter()
        .map(|date| current - counts.iter().filter(|c| date_of(c, tz) > *date).map(|c| c.n).sum::<i64>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(hour: &str, key: &str, n: i64) -> HourCount {
        let hour = DateTime::parse_from_rfc3339(hour).map(|t| t.to_utc()).unwrap_or_default();
        HourCount { hour, key: key.to_string(), n }
    }

    fn tokyo() -> Tz {
        chrono_tz::Asia::Tokyo
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-06T03:30:00Z").map(|t| t.to_utc()).unwrap_or_default()
    }

    #[test]
    fn days_are_local_and_end_today() {
        let days = dates(now(), tokyo(), 3);
        let expected: Vec<NaiveDate> =
            ["2026-12-04", "2026-12-05", "2026-12-06"].iter().filter_map(|d| d.parse().ok()).collect();
        assert_eq!(days, expected);
        // Tokyo's 4 December starts at 15:00 UTC the day before.
        assert_eq!(since(now(), tokyo(), 3).to_rfc3339(), "2026-12-03T15:00:00+00:00");
    }

    #[test]
    fn sums_put_each_hour_in_its_local_day() {
        let days = dates(now(), tokyo(), 3);
        let counts = [
            count("2026-12-04T14:00:00Z", "a", 1), // 23:00 on the 4th in Tokyo
            count("2026-12-04T15:00:00Z", "a", 2), // 00:00 on the 5th
            count("2026-12-05T16:00:00Z", "b", 5), // the 6th
            count("2026-12-05T17:00:00Z", "a", 7),
        ];
        assert_eq!(daily_sums(&counts, None, &days, tokyo()), [1, 2, 12]);
        assert_eq!(daily_sums(&counts, Some("a"), &days, tokyo()), [1, 2, 7]);
        assert_eq!(daily_sums(&[], None, &days, tokyo()), [0, 0, 0]);
    }

    #[test]
    fn levels_walk_back_from_today() {
        let days = dates(now(), tokyo(), 3);
        // +3 on the 4th, -1 on the 5th, +2 on the 6th: 10 now.
        let counts = [
            count("2026-12-04T01:00:00Z", "", 3),
            count("2026-12-05T01:00:00Z", "", -1),
            count("2026-12-06T01:00:00Z", "", 2),
        ];
        assert_eq!(daily_levels(&counts, 10, &days, tokyo()), [9, 8, 10]);
        assert_eq!(daily_levels(&[], 4, &days, tokyo()), [4, 4, 4], "no change: flat");
    }
}
