//! `renkei import` and `renkei migrate` as a user runs them: the real binary,
//! a config in the environment, files on disk.

use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};

fn renkei(db_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_renkei"))
        .args(args)
        .env("RENKEI_DATABASE__URL", db_url)
        .env("RENKEI_PATHS__SEGMENTS", shipped_segments())
        .env("RENKEI_LOG__LEVEL", "warn")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run renkei")
}

fn shipped_segments() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/config/segments")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn events_file(dir: &Path, lines: usize, broken_line: Option<usize>) -> std::path::PathBuf {
    let path = dir.join("events.ndjson");
    let mut body = String::new();
    for n in 1..=lines {
        if Some(n) == broken_line {
            body.push_str("{\"type\": \"purchase\", \"member_id\": \"m1\", \"occurred_at\": \"yesterday\"}\n");
        } else {
            let event = json!({"event_id": format!("e{n}"), "type": "purchase", "member_id": format!("m{}", n % 7),
                               "occurred_at": "2026-11-23T10:00:00+09:00", "properties": {"amount": n}});
            body.push_str(&event.to_string());
            body.push('\n');
        }
    }
    std::fs::write(&path, body).expect("write events");
    path
}

async fn event_count(db_url: &str) -> u64 {
    let store = renkei_store::connect(db_url).await.expect("connect");
    store.migrate().await.expect("migrate");
    store.counts().await.expect("counts").events
}

#[tokio::test]
async fn a_broken_line_7_of_100_names_file_and_line_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let file = events_file(dir.path(), 100, Some(7));
    let out = renkei(&db, &["import", "events", file.to_str().expect("path")]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("{}:7: occurred_at:", file.display())), "{stderr}");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    assert_eq!(event_count(&db).await, 0);

    let file = events_file(dir.path(), 100, None);
    let out = renkei(&db, &["import", "events", file.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("100 accepted, 0 duplicates"), "{}", text(&out.stdout));
    let out = renkei(&db, &["import", "events", file.to_str().expect("path")]);
    assert!(text(&out.stdout).contains("0 accepted, 100 duplicates"), "importing twice changes nothing");
    assert_eq!(event_count(&db).await, 100);
}

#[tokio::test]
async fn many_bad_lines_show_the_first_twenty_and_a_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let path = dir.path().join("bad.ndjson");
    std::fs::write(&path, "not json\n".repeat(25)).expect("write");
    let out = renkei(&db, &["import", "events", path.to_str().expect("path")]);
    let stderr = text(&out.stderr);
    assert_eq!(stderr.matches("invalid JSON").count(), 20, "{stderr}");
    assert!(stderr.contains("and 5 more invalid lines"), "{stderr}");
    assert!(stderr.contains("25 invalid line(s)"), "{stderr}");
}

#[tokio::test]
async fn members_csv_with_typed_headers_and_links() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let csv = dir.path().join("members.csv");
    std::fs::write(
        &csv,
        "member_id,line_user_id,rank,points:number,birthday:date,vip:bool,tags:json\n\
         m1,U00000000000000000000000000000001,gold,1200,1992-02-29,true,\"[\"\"a\"\"]\"\n\
         m2,,silver,,,false,\n",
    )
    .expect("write csv");
    let out = renkei(&db, &["import", "members", csv.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2 created, 0 updated, 0 unchanged, 1 linked"), "{}", text(&out.stdout));
    let store = renkei_store::connect(&db).await.expect("connect");
    let m1 = store.get_member(&"m1".parse().expect("id")).await.expect("get").expect("m1");
    assert_eq!(
        serde_json::Value::Object(m1.attributes),
        json!({"rank": "gold", "points": 1200, "birthday": "1992-02-29", "vip": true, "tags": ["a"]})
    );
    let m2 = store.get_member(&"m2".parse().expect("id")).await.expect("get").expect("m2");
    assert_eq!(
        serde_json::Value::Object(m2.attributes),
        json!({"rank": "silver", "vip": false}),
        "empty cells are absent"
    );
    let link = store.get_link(&"m1".parse().expect("id")).await.expect("get").expect("linked");
    assert_eq!(link.method, renkei_core::LinkMethod::Import);
    drop(store);

    let out = renkei(&db, &["import", "members", csv.to_str().expect("path")]);
    assert!(text(&out.stdout).contains("0 created, 0 updated, 2 unchanged, 0 linked"), "{}", text(&out.stdout));

    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "member_id,points:number\nm3,12\nm4,lots\n").expect("write");
    let out = renkei(&db, &["import", "members", bad.to_str().expect("path")]);
    assert!(
        text(&out.stderr).contains(&format!("{}:3: points: \"lots\" is not a number", bad.display())),
        "{}",
        text(&out.stderr)
    );
    let store = renkei_store::connect(&db).await.expect("connect");
    assert!(store.get_member(&"m3".parse().expect("id")).await.expect("get").is_none(), "nothing written");
}

#[tokio::test]
async fn a_claimed_line_user_in_an_import_aborts_it_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let path = dir.path().join("members.ndjson");
    std::fs::write(
        &path,
        "{\"member_id\":\"a\",\"line_user_id\":\"U00000000000000000000000000000001\"}\n\
         {\"member_id\":\"b\",\"attributes\":{\"rank\":\"gold\"}}\n\
         {\"member_id\":\"c\",\"line_user_id\":\"U00000000000000000000000000000001\"}\n",
    )
    .expect("write");
    let out = renkei(&db, &["import", "members", path.to_str().expect("path")]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("already linked to another member"), "{}", text(&out.stderr));
    let store = renkei_store::connect(&db).await.expect("connect");
    assert_eq!(store.counts().await.expect("counts").members, 0, "nothing written");
}

#[test]
fn unsupported_file_type_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let path = dir.path().join("events.csv");
    std::fs::write(&path, "x\n").expect("write");
    let out = renkei(&db, &["import", "events", path.to_str().expect("path")]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("unsupported file type; expected .ndjson"), "{}", text(&out.stderr));
}

#[test]
fn a_shift_jis_or_utf16_csv_is_refused_once_naming_the_encoding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    // 花子 in Shift_JIS, on 30 lines.
    let mut sjis = b"member_id,name\n".to_vec();
    for n in 0..30 {
        sjis.extend_from_slice(format!("m{n},").as_bytes());
        sjis.extend_from_slice(&[0x89, 0xD4, 0x8E, 0x71, b'\n']);
    }
    let utf16: Vec<u8> = std::iter::once(0xFEFF_u16)
        .chain("member_id,name\nm1,花子\n".encode_utf16())
        .flat_map(|unit| unit.to_le_bytes())
        .collect();
    for (name, bytes, encoding, iconv) in
        [("sjis.csv", sjis, "Shift_JIS", "-f SHIFT_JIS"), ("utf16.csv", utf16, "UTF-16", "-f UTF-16")]
    {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let out = renkei(&db, &["import", "members", path.to_str().expect("path")]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert_eq!(stderr.matches("is not UTF-8").count(), 1, "{name}: once: {stderr}");
        assert!(stderr.contains(encoding) && stderr.contains(iconv), "{name}: {stderr}");
        assert!(!stderr.contains("byte index"), "{name}: {stderr}");
    }
}

#[tokio::test]
async fn ndjson_with_a_byte_order_mark_is_imported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let path = dir.path().join("events.ndjson");
    let event =
        json!({"event_id": "bom-1", "type": "purchase", "member_id": "m1", "occurred_at": "2026-11-23T10:00:00Z"});
    std::fs::write(&path, format!("\u{feff}{event}\n{}\n", event.to_string().replace("bom-1", "bom-2")))
        .expect("write");
    let out = renkei(&db, &["import", "events", path.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2 accepted"), "{}", text(&out.stdout));
    assert_eq!(event_count(&db).await, 2);
}

#[test]
fn an_integer_beyond_64_bits_in_ndjson_is_refused_with_its_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let path = dir.path().join("events.ndjson");
    let line = r#"{"type": "purchase", "member_id": "m1", "occurred_at": "2026-11-23T10:00:00Z", "properties": {"amount": 99999999999999999999}}"#;
    std::fs::write(&path, format!("{line}\n")).expect("write");
    let out = renkei(&db, &["import", "events", path.to_str().expect("path")]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:1: properties.amount: an integer beyond 64 bits", path.display())),
        "{stderr}"
    );
}

/// Imported events count in the running tallies the server reads: a
/// whole-history condition with a filter (`campaign_participants`) holds
/// for a user whose only matching events were imported.
#[tokio::test]
async fn imported_events_count_in_the_running_tallies() {
    use renkei_core::{Clock, LineUserId, SystemClock};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let path = dir.path().join("entries.ndjson");
    let user = "U00000000000000000000000000000e01";
    let entry = |id: &str, campaign: &str| {
        json!({"event_id": id, "type": "campaign_entry", "line_user_id": user,
               "occurred_at": "2025-01-10T10:00:00+09:00", "properties": {"campaign_id": campaign}})
        .to_string()
    };
    // A server has built the tallies after the first import; the second adds to them.
    std::fs::write(&path, format!("{}\n", entry("x1", "autumn_2025"))).expect("write");
    let out = renkei(&db, &["import", "events", path.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let store = renkei_store::connect(&db).await.expect("connect");
    let segments = std::sync::Arc::new(renkei::app::load_segments(Path::new(shipped_segments())).expect("segments"));
    let engine = || {
        renkei_evaluator::MembershipEngine::new(
            renkei_evaluator::EngineStore::of(&store),
            segments.clone(),
            std::sync::Arc::new(SystemClock),
            chrono_tz::Asia::Tokyo,
        )
        .with_tallies()
    };
    engine().await.expect("tallies");
    std::fs::write(&path, format!("{}\n", entry("x2", "spring_2026"))).expect("write");
    let out = renkei(&db, &["import", "events", path.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let engine = engine().await.expect("tallies");
    let user = LineUserId::parse(user).expect("user");
    engine.evaluate_user(&user, renkei_evaluator::Cause::Event).await.expect("evaluate");
    let kept = engine.memberships(&user).await.expect("memberships");
    let previewed = engine.preview("campaign_participants", SystemClock.now()).await.expect("preview");
    assert!(kept.contains("campaign_participants"), "from the tallies: {kept:?}");
    assert_eq!(previewed, vec![user], "from the raw events");
}

renkei_test_support::on_both_backends!(
    multi_thread, crate::common::spawn_app => a_member_import_by_another_process_reaches_a_running_servers_segments
);

/// Issue 13 item 3: `renkei import members` is another process; the running
/// server's evaluator finds its changes in the change feed and the imported
/// gold member is in `gold_members` within a second of the import's end.
async fn a_member_import_by_another_process_reaches_a_running_servers_segments(app: crate::common::TestApp) {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("members.csv");
    let gold = "U0000000000000000000000000000a001";
    std::fs::write(&csv, format!("member_id,line_user_id,rank\nm-gold,{gold},gold\nm-silver,,silver\n"))
        .expect("write csv");
    let out = renkei(&app.db_url(), &["import", "members", csv.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let imported = std::time::Instant::now();
    loop {
        let (status, body) = app.get("/v1/segments/gold_members/members").await;
        assert_eq!(status, 200, "{body}");
        let members = body["line_user_ids"].as_array().cloned().unwrap_or_default();
        if members.iter().any(|m| m == gold) {
            break;
        }
        assert!(
            imported.elapsed() < std::time::Duration::from_secs(1),
            "not in the segment 1 s after the import: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
