//! Calendar arithmetic in the configured timezone: bare dates, local
//! midnights (which DST can move or remove) and anniversaries.

use crate::ast::AnniversaryWhen;
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// A strict `YYYY-MM-DD` (exactly ten characters; `2024-1-5` is not a date here).
pub fn parse_date_only(text: &str) -> Option<NaiveDate> {
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| if i == 4 || i == 7 { *b == b'-' } else { b.is_ascii_digit() });
    if !shaped {
        return None;
    }
    // The shape is checked, so the digits are read directly (a format string
    // is parsed on every call of `NaiveDate::parse_from_str`).
    let number = |digits: &[u8]| digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    let year = i32::try_from(number(&bytes[0..4])).ok()?;
    NaiveDate::from_ymd_opt(year, number(&bytes[5..7]), number(&bytes[8..10]))
}

/// An RFC 3339 timestamp, or a bare `YYYY-MM-DD` meaning the start of that
/// day in `tz` (how member attributes such as `birthday` read as times).
pub fn parse_time(text: &str, tz: Tz) -> Option<DateTime<Utc>> {
    if let Some(date) = parse_date_only(text) {
        return start_of_day(date, tz);
    }
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

/// The first instant of `date` in `tz`. Usually local midnight; when a DST
/// change skips midnight, the first local time that exists that day.
pub fn start_of_day(date: NaiveDate, tz: Tz) -> Option<DateTime<Utc>> {
    let midnight = date.and_hms_opt(0, 0, 0)?;
    // Real offsets change on quarter hours, so a quarter-hour scan finds the end of any gap.
    (0..24 * 4).find_map(|quarter| {
        let local = midnight.checked_add_signed(Duration::minutes(15 * quarter))?;
        tz.from_local_datetime(&local).earliest().map(|t| t.with_timezone(&Utc))
    })
}

/// The local date of `at` in `tz`.
pub fn local_date(at: DateTime<Utc>, tz: Tz) -> NaiveDate {
    at.with_timezone(&tz).date_naive()
}

/// The first instant after `now` at which the local date in `tz` changes.
pub fn next_local_midnight(now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
    let today = local_date(now, tz);
    // A day can be skipped entirely (Samoa, 2011-12-30), so look a few days ahead.
    let mut date = today;
    for _ in 0..3 {
        date = date.succ_opt()?;
        if let Some(start) = start_of_day(date, tz).filter(|start| *start > now) {
            return Some(start);
        }
    }
    None
}

fn is_leap_year(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// The date `birth`'s month-day falls on in `year`; 29 Feb is 28 Feb in a
/// non-leap year.
pub fn anniversary_in(birth: NaiveDate, year: i32) -> Option<NaiveDate> {
    let day = if birth.month() == 2 && birth.day() == 29 && !is_leap_year(year) { 28 } else { birth.day() };
    NaiveDate::from_ymd_opt(year, birth.month(), day)
}

/// Whether the anniversary of `birth` falls `when`, seen from local date `today`.
pub fn anniversary_matches(birth: NaiveDate, today: NaiveDate, when: AnniversaryWhen) -> bool {
    match when {
        AnniversaryWhen::Today => anniversary_in(birth, today.year()) == Some(today),
        AnniversaryWhen::ThisMonth => birth.month() == today.month(),
        AnniversaryWhen::WithinDays(days) => {
            let this_year = anniversary_in(birth, today.year());
            let next = match this_year {
                Some(date) if date >= today => Some(date),
                _ => today.year().checked_add(1).and_then(|year| anniversary_in(birth, year)),
            };
            next.is_some_and(|date| (date - today).num_days() < i64::from(days))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono_tz::{America, Asia, Pacific, UTC};

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 4000, ..Default::default() })]
        #[test]
        fn date_only_agrees_with_chrono_format_parsing(
            year in proptest::prop_oneof![0u32..10_000, 1999u32..2002],
            month in proptest::prop_oneof![0u32..14, 0u32..100],
            day in proptest::prop_oneof![0u32..33, 27u32..31, 0u32..100],
        ) {
            let text = format!("{year:04}-{month:02}-{day:02}");
            proptest::prop_assert_eq!(parse_date_only(&text), NaiveDate::parse_from_str(&text, "%Y-%m-%d").ok(), "{}", text);
        }
    }

    #[test]
    fn bare_dates_are_local_midnight() {
        assert_eq!(parse_time("2026-03-01", Asia::Tokyo), Some(utc("2026-02-28T15:00:00Z")));
        assert_eq!(parse_time("2026-03-01", UTC), Some(utc("2026-03-01T00:00:00Z")));
        assert_eq!(parse_time("2026-03-01T09:00:00+09:00", UTC), Some(utc("2026-03-01T00:00:00Z")));
        for bad in ["2026-3-1", "2026-02-30", "20260301", "", "2026-03-01x", "２０２６-03-01"] {
            assert_eq!(parse_time(bad, UTC), None, "{bad}");
        }
    }

    #[test]
    fn start_of_day_skips_a_dst_gap_at_midnight() {
        // Santiago moved clocks from 00:00 to 01:00 on 2022-09-11.
        let start = start_of_day(date(2022, 9, 11), America::Santiago).unwrap();
        assert_eq!(start, utc("2022-09-11T04:00:00Z"));
        // Samoa skipped 2011-12-30 entirely.
        let now = utc("2011-12-29T12:00:00Z"); // 29 Dec, 02:00 local (UTC-10)
        assert_eq!(local_date(now, Pacific::Apia), date(2011, 12, 29));
        let next = next_local_midnight(now, Pacific::Apia).unwrap();
        assert_eq!(local_date(next, Pacific::Apia), date(2011, 12, 31));
        assert_eq!(local_date(next - Duration::seconds(1), Pacific::Apia), date(2011, 12, 29));
    }

    #[test]
    fn next_local_midnight_in_tokyo_and_utc() {
        let now = utc("2026-03-01T14:59:59Z");
        assert_eq!(next_local_midnight(now, Asia::Tokyo), Some(utc("2026-03-01T15:00:00Z")));
        assert_eq!(next_local_midnight(now, UTC), Some(utc("2026-03-02T00:00:00Z")));
        // Exactly at midnight, the next one is a day later.
        assert_eq!(next_local_midnight(utc("2026-03-01T15:00:00Z"), Asia::Tokyo), Some(utc("2026-03-02T15:00:00Z")));
    }

    #[test]
    fn anniversaries() {
        let birth = date(1990, 3, 31);
        assert!(anniversary_matches(birth, date(2026, 3, 31), AnniversaryWhen::Today));
        assert!(!anniversary_matches(birth, date(2026, 3, 30), AnniversaryWhen::Today));
        assert!(anniversary_matches(birth, date(2026, 3, 1), AnniversaryWhen::ThisMonth));
        assert!(!anniversary_matches(birth, date(2026, 4, 1), AnniversaryWhen::ThisMonth));
        // Across the month end: 30 Mar + 2 days covers 30 and 31 Mar.
        assert!(anniversary_matches(birth, date(2026, 3, 30), AnniversaryWhen::WithinDays(2)));
        assert!(!anniversary_matches(birth, date(2026, 3, 29), AnniversaryWhen::WithinDays(2)));
        assert!(anniversary_matches(birth, date(2026, 3, 31), AnniversaryWhen::WithinDays(1)));
        assert!(!anniversary_matches(birth, date(2026, 4, 1), AnniversaryWhen::WithinDays(7)));
        // Across the year end.
        let new_year = date(2000, 1, 2);
        assert!(anniversary_matches(new_year, date(2026, 12, 28), AnniversaryWhen::WithinDays(7)));
        assert!(!anniversary_matches(new_year, date(2026, 12, 26), AnniversaryWhen::WithinDays(7)));
    }

    #[test]
    fn leap_day_counts_as_28_february_in_other_years() {
        let leap = date(2000, 2, 29);
        assert!(anniversary_matches(leap, date(2027, 2, 28), AnniversaryWhen::Today));
        assert!(!anniversary_matches(leap, date(2027, 3, 1), AnniversaryWhen::Today));
        assert!(anniversary_matches(leap, date(2028, 2, 29), AnniversaryWhen::Today));
        assert!(!anniversary_matches(leap, date(2028, 2, 28), AnniversaryWhen::Today));
        assert!(anniversary_matches(leap, date(2027, 2, 27), AnniversaryWhen::WithinDays(2)));
        assert!(!anniversary_matches(leap, date(2027, 2, 26), AnniversaryWhen::WithinDays(2)));
        assert!(anniversary_matches(leap, date(2027, 2, 1), AnniversaryWhen::ThisMonth));
    }
}
