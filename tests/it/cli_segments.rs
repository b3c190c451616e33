//! `renkei segments preview` as an operator runs it: the real binary over a
//! store filled beforehand, on SQLite and PostgreSQL.

use chrono::{TimeZone, Utc};
use renkei_core::{LineUserId, LinkMethod, MemberId, NewEvent};
use renkei_test_support::TestStore;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};

const USER_1: &str = "U00000000000000000000000000000001";
const USER_2: &str = "U00000000000000000000000000000002";
const USER_3: &str = "U00000000000000000000000000000003";
/// Bought within the last 7 days, as of the instant evaluated.
const WEEKLY: &str = "id: weekly_buyers\nname: 今週の購入者\nrule:\n  event: purchase\n  within: 7d\n";
const GOLD: &str = "id: gold\nname: ゴールド\nrule:\n  attribute: rank\n  eq: gold\n";

fn renkei(db_url: &str, segments: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_renkei"))
        .args(args)
        .env("RENKEI_DATABASE__URL", db_url)
        .env("RENKEI_PATHS__SEGMENTS", segments)
        .env("RENKEI_LOG__LEVEL", "warn")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run renkei")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// U2 and U1 buy on 1 and 5 March (U2 through its member), U3 only follows.
async fn fill(test: &TestStore) {
    let store = &test.store;
    let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).single().expect("time");
    let user = |id: &str| LineUserId::parse(id).expect("user");
    store.link(&MemberId::parse("m2").expect("member"), &user(USER_2), LinkMethod::Api, t0).await.expect("link");
    store.set_following(&user(USER_3), true, t0).await.expect("follow");
    let events = [
        json!({"event_id": "a", "type": "purchase", "member_id": "m2", "occurred_at": "2026-03-01T00:00:00Z"}),
        json!({"event_id": "b", "type": "purchase", "line_user_id": USER_1, "occurred_at": "2026-03-05T00:00:00Z"}),
    ]
    .iter()
    .map(|e| NewEvent::parse(e).expect("event"))
    .collect::<Vec<_>>();
    store.insert_events(&events, t0).await.expect("events");
}

async fn preview_prints_membership_at_the_instant(test: TestStore) {
    fill(&test).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("weekly.yaml"), WEEKLY).expect("write");
    std::fs::write(dir.path().join("gold.yaml"), GOLD).expect("write");
    let json_at = |at: &str| {
        renkei(&test.url, dir.path(), &["segments", "preview", "weekly_buyers", "--at", at, "--format", "json"])
    };

    // Both bought within the week before 6 March: sorted by LINE user ID.
    let out = json_at("2026-03-06T09:00:00+09:00");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{{\"segment\":\"weekly_buyers\",\"at\":\"2026-03-06T00:00:00Z\",\"count\":2,\"line_user_ids\":[\"{USER_1}\",\"{USER_2}\"]}}\n"
        )
    );
    // On 2 March U1's purchase has not happened yet; on 10 March U2's is too old.
    let out = json_at("2026-03-02T00:00:00Z");
    assert_eq!(
        text(&out.stdout),
        format!(
            "{{\"segment\":\"weekly_buyers\",\"at\":\"2026-03-02T00:00:00Z\",\"count\":1,\"line_user_ids\":[\"{USER_2}\"]}}\n"
        )
    );
    let out = json_at("2026-03-10T00:00:00Z");
    assert_eq!(
        text(&out.stdout),
        format!(
            "{{\"segment\":\"weekly_buyers\",\"at\":\"2026-03-10T00:00:00Z\",\"count\":1,\"line_user_ids\":[\"{USER_1}\"]}}\n"
        )
    );

    let out = renkei(&test.url, dir.path(), &["segments", "preview", "weekly_buyers", "--at", "2026-03-06T00:00:00Z"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "segment weekly_buyers (今週の購入者) at 2026-03-06T00:00:00Z: 2 members\nline_user_id\n{USER_1}\n{USER_2}\n"
        )
    );
    let out = renkei(&test.url, dir.path(), &["segments", "preview", "gold", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((body["count"].as_u64(), body["line_user_ids"].clone()), (Some(0), json!([])));

    // Pure evaluation: nothing was written.
    assert!(test.store.segment_stats().await.expect("stats").is_empty());
    assert!(test.store.transitions_after(0, 10).await.expect("transitions").is_empty());
}

async fn preview_refuses_unknown_segments_and_bad_times(test: TestStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("weekly.yaml"), WEEKLY).expect("write");

    let out = renkei(&test.url, dir.path(), &["segments", "preview", "nope", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown segment `nope`") && stderr.contains("weekly_buyers"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    let out = renkei(&test.url, dir.path(), &["segments", "preview", "weekly_buyers", "--at", "yesterday"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--at") && stderr.contains("RFC 3339"), "{stderr}");

    // Invalid segment files: file:line:col, exit 1.
    std::fs::write(dir.path().join("broken.yaml"), "id: broken\nname: x\nrule:\n  linkd: true\n").expect("write");
    let out = renkei(&test.url, dir.path(), &["segments", "preview", "weekly_buyers"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("{}:4:3:", dir.path().join("broken.yaml").display())), "{stderr}");
}

renkei_test_support::on_both_backends!(
    renkei_test_support::store =>
    preview_prints_membership_at_the_instant,
    preview_refuses_unknown_segments_and_bad_times,
);
