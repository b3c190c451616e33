//! `renkei campaigns report`'s table: the stats JSON, read by a person.

use serde_json::Value;
use std::fmt::Write;

/// The stats of `renkei_api::campaigns::campaign_stats` as a few lines.
pub fn render(stats: &Value) -> String {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(out, "campaign {} ({})", text(&stats["campaign"]), text(&stats["state"]));
    let _ = writeln!(
        out,
        "  sent {}, pending {}, failed {}, skipped {}{}",
        n(&stats["sent"]),
        n(&stats["pending"]),
        n(&stats["failed"]),
        n(&stats["skipped"]),
        reasons(&stats["skipped_by_reason"])
    );
    let _ = writeln!(out, "  clicked {} ({} users)", n(&stats["clicked"]), n(&stats["clicked_users"]));
    match stats["converted"].as_u64() {
        Some(converted) => {
            let _ = writeln!(
                out,
                "  converted {converted} of {} exposed{}, value {}",
                n(&stats["exposed"]),
                rate(converted, n(&stats["exposed"])),
                amount(&stats["conversion_value"])
            );
        }
        None => {
            let _ = writeln!(out, "  no goal: conversions are not measured");
        }
    }
    let holdout = &stats["holdout"];
    if !holdout.is_null() {
        match holdout["converted"].as_u64() {
            Some(converted) => {
                let users = n(&holdout["users"]);
                let value = amount(&holdout["conversion_value"]);
                let _ = writeln!(
                    out,
                    "  holdout: {users} users, {converted} converted{}, value {value}",
                    rate(converted, users)
                );
            }
            None => {
                let _ = writeln!(out, "  holdout: {} users", n(&holdout["users"]));
            }
        }
    }
    let lift = &stats["lift"];
    if !lift.is_null() {
        let points = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{:+.1}", x * 100.0));
        let relative = lift["relative"].as_f64().map_or("n/a".to_string(), |r| format!("{:+.1} %", r * 100.0));
        let _ = writeln!(
            out,
            "  lift {} points (95 % CI {} to {}, Newcombe), relative {relative}",
            points(&lift["absolute"]),
            points(&lift["ci95"][0]),
            points(&lift["ci95"][1]),
        );
    }
    out
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

fn reasons(value: &Value) -> String {
    match value.as_object() {
        Some(map) if !map.is_empty() => {
            let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k} {}", v.as_u64().unwrap_or(0))).collect();
            format!(" ({})", parts.join(", "))
        }
        _ => String::new(),
    }
}

fn rate(part: u64, whole: u64) -> String {
    if whole == 0 { String::new() } else { format!(" ({:.1} %)", part as f64 * 100.0 / whole as f64) }
}

/// A conversion value with thousands separators (values are usually yen).
fn amount(value: &Value) -> String {
    let x = value.as_f64().unwrap_or(0.0);
    let whole = format!("{:.0}", x.abs());
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if x < 0.0 { format!("-{grouped}") } else { grouped }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_report_names_every_figure() {
        let stats = json!({"campaign": "followup", "state": "active", "sent": 6, "pending": 0, "failed": 1,
            "skipped": 2, "skipped_by_reason": {"unfollowed": 2}, "clicked": 3, "clicked_users": 2,
            "exposed": 6, "converted": 3, "conversion_value": 1234567.0,
            "holdout": {"users": 4, "converted": 1, "conversion_value": 500.0},
            "lift": {"treated_rate": 0.5, "holdout_rate": 0.25, "absolute": 0.25, "ci95": [-0.3, 0.6], "relative": 1.0}});
        let text = render(&stats);
        for part in [
            "campaign followup (active)",
            "sent 6, pending 0, failed 1, skipped 2 (unfollowed 2)",
            "converted 3 of 6 exposed (50.0 %), value 1,234,567",
            "holdout: 4 users, 1 converted (25.0 %), value 500",
            "lift +25.0 points (95 % CI -30.0 to +60.0, Newcombe), relative +100.0 %",
        ] {
            assert!(text.contains(part), "{part:?} in\n{text}");
        }
        let without =
            render(&json!({"campaign": "c", "state": "paused", "converted": null, "holdout": null, "lift": null}));
        assert!(without.contains("no goal") && !without.contains("holdout") && !without.contains("lift"), "{without}");
    }
}
