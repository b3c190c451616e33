//! `renkei segments preview`: a segment's membership at an instant, evaluated
//! on the fly over the stored audience (stored memberships are not read, so
//! a past or future `--at` works and nothing is written).

use chrono::{DateTime, SecondsFormat, Utc};
use renkei_core::LineUserId;
use serde::Serialize;

/// How the preview prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PreviewFormat {
    /// A summary line, then one LINE user ID per line.
    Table,
    /// `{"segment":ID,"at":…,"count":N,"line_user_ids":[sorted]}`.
    Json,
}

/// Parses `--at`: RFC 3339 with an offset.
pub fn parse_at(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim()).map(|t| t.with_timezone(&Utc)).map_err(|e| {
        format!("{e}; expected an RFC 3339 time with an offset, like 2026-11-23T10:00:00+09:00 or 2026-11-23T01:00:00Z")
    })
}

/// The JSON shape of `renkei segments preview --format json` that the product
/// spec pins for scripts (field order included).
#[derive(Serialize)]
struct PreviewJson<'a> {
    segment: &'a str,
    at: String,
    count: usize,
    line_user_ids: &'a [LineUserId],
}

/// Formats a preview; `members` must already be sorted.
pub fn render(segment: &str, name: &str, at: DateTime<Utc>, members: &[LineUserId], format: PreviewFormat) -> String {
    let at_text = at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    match format {
        PreviewFormat::Json => {
            let body = PreviewJson { segment, at: at_text, count: members.len(), line_user_ids: members };
            let mut text = serde_json::to_string(&body).unwrap_or_default();
            text.push('\n');
            text
        }
        PreviewFormat::Table => {
            let noun = if members.len() == 1 { "member" } else { "members" };
            let mut text = format!("segment {segment} ({name}) at {at_text}: {} {noun}\n", members.len());
            if !members.is_empty() {
                text.push_str("line_user_id\n");
            }
            for member in members {
                text.push_str(member.as_str());
                text.push('\n');
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_has_the_pinned_shape_and_order() {
        let at = parse_at("2026-03-01T09:00:00+09:00").unwrap();
        let users = [LineUserId::parse("U00000000000000000000000000000001").unwrap()];
        assert_eq!(
            render("gold", "Gold", at, &users, PreviewFormat::Json),
            "{\"segment\":\"gold\",\"at\":\"2026-03-01T00:00:00Z\",\"count\":1,\"line_user_ids\":[\"U00000000000000000000000000000001\"]}\n"
        );
        assert!(
            render("gold", "Gold", at, &[], PreviewFormat::Table)
                .contains("gold (Gold) at 2026-03-01T00:00:00Z: 0 members")
        );
    }

    #[test]
    fn bad_times_say_what_is_expected() {
        for bad in ["yesterday", "2026-03-01", "2026-03-01T00:00:00"] {
            assert!(parse_at(bad).unwrap_err().contains("RFC 3339"), "{bad}");
        }
    }
}
