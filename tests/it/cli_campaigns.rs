//! `renkei check` and `renkei campaigns dry-run` as an operator runs them:
//! the real binary, over a database filled by `renkei import members`.

use chrono::Utc;
use renkei_core::LineUserId;
use renkei_test_support::TestStore;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;

const USER_1: &str = "U00000000000000000000000000000001";
const USER_2: &str = "U00000000000000000000000000000002";

const LINKED: &str = "id: linked\nname: 連携済み\nrule:\n  linked: true\n";
const WELCOME: &str = "id: welcome\nname: ようこそ\ntrigger:\n  segment_entered: linked\nmessages:\n  - template: welcome\n    alt_text: \"{{member.name}}さん、ようこそ\"\n";
const TEMPLATE: &str = r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [
  {"type": "text", "text": "{{member.name}}さん ({{member.rank}})", "wrap": true}]}}"#;

/// Segment, campaign and template directories.
struct Dirs {
    root: TempDir,
}

impl Dirs {
    fn new() -> Self {
        let dirs = Self { root: tempfile::tempdir().expect("tempdir") };
        for d in ["segments", "campaigns", "templates"] {
            std::fs::create_dir_all(dirs.root.path().join(d)).expect("mkdir");
        }
        dirs.write("segments/linked.yaml", LINKED);
        dirs.write("campaigns/welcome.yaml", WELCOME);
        dirs.write("templates/welcome.json.hbs", TEMPLATE);
        dirs
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    fn write(&self, relative: &str, text: &str) {
        std::fs::write(self.path(relative), text).expect("write");
    }

    fn renkei(&self, db_url: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_renkei"))
            .args(args)
            .env("RENKEI_DATABASE__URL", db_url)
            .env("RENKEI_PATHS__SEGMENTS", self.path("segments"))
            .env("RENKEI_PATHS__CAMPAIGNS", self.path("campaigns"))
            .env("RENKEI_PATHS__TEMPLATES", self.path("templates"))
            .env("RENKEI_PATHS__RICH_MENUS", self.path("rich_menus.yaml"))
            .env("RENKEI_LOG__LEVEL", "warn")
            .current_dir(self.root.path())
            .output()
            .expect("run renkei")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("renkei.db").display())
}

#[test]
fn check_reports_broken_campaigns_with_file_line_col_and_exits_1() {
    let dirs = Dirs::new();
    let url = sqlite_url(dirs.root.path());
    let out = dirs.renkei(&url, &["check"]);
    assert!(out.status.success(), "the valid set passes: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("1 campaigns in"), "{}", text(&out.stdout));

    // A typo'd key, an unknown segment and a missing template, in three files.
    dirs.write(
        "campaigns/typo.yaml",
        "id: typo\nname: x\ntrigger:\n  segment_entered: linked\nmessages:\n  - template: welcome\n    alt_text: hi\nfrequncy_cap: { max: 1, per: 7d }\n",
    );
    dirs.write(
        "campaigns/segment.yaml",
        "id: segment\nname: x\ntrigger:\n  segment_entered: no_such_segment\nmessages:\n  - template: welcome\n    alt_text: hi\n",
    );
    dirs.write(
        "campaigns/template.yaml",
        "id: template\nname: x\ntrigger:\n  event: signup\nmessages:\n  - template: no_such_template\n    alt_text: hi\n",
    );
    let out = dirs.renkei(&url, &["check"]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    let at = |file: &str, line: u32, col: u32| format!("{}:{line}:{col}: ", dirs.path(file).display());
    let line_of = |prefix: String| -> String {
        stderr
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stderr}"))
            .to_string()
    };
    assert!(line_of(at("campaigns/typo.yaml", 8, 1)).contains("frequncy_cap"), "{stderr}");
    assert!(line_of(at("campaigns/segment.yaml", 4, 20)).contains("no_such_segment"), "{stderr}");
    assert!(line_of(at("campaigns/template.yaml", 6, 15)).contains("no_such_template"), "{stderr}");
    // Every problem line is `file:line:col: message`; nothing is reported as loaded.
    let problems: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&*dirs.root.path().to_string_lossy())).collect();
    assert_eq!(problems.len(), 3, "{stderr}");
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    assert!(!text(&out.stdout).contains("config ok"), "{}", text(&out.stdout));
}

/// m1 (linked, follows), m2 (linked, then unfollowed), m3 (not linked), imported by the CLI.
async fn prepare(dirs: &Dirs, test: &TestStore) {
    dirs.write(
        "members.csv",
        &format!("member_id,line_user_id,name,rank\nm1,{USER_1},山田,gold\nm2,{USER_2},佐藤,silver\nm3,,鈴木,gold\n"),
    );
    let out = dirs.renkei(&test.url, &["import", "members", &dirs.path("members.csv").to_string_lossy()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("3 created, 0 updated, 0 unchanged, 2 linked"), "{}", text(&out.stdout));
    // U2 blocks the account (what an unfollow webhook records).
    let user = LineUserId::parse(USER_2).expect("user");
    test.store.set_following(&user, false, Utc::now()).await.expect("unfollow");
}

async fn dry_run_shows_each_recipient_with_its_decision(test: TestStore) {
    let dirs = Dirs::new();
    prepare(&dirs, &test).await;
    let out = dirs.renkei(
        &test.url,
        &["campaigns", "dry-run", "welcome", "--at", "2030-08-01T12:00:00+09:00", "--format", "json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let body: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    assert_eq!(body["campaign"], "welcome");
    assert_eq!(body["at"], "2030-08-01T03:00:00Z");
    assert_eq!((body["send"].clone(), body["defer"].clone()), (json!(1), json!(0)), "{body}");
    assert_eq!(body["skip"], json!({"unfollowed": 1}), "{body}");
    let recipients = body["recipients"].as_array().expect("recipients");
    assert_eq!(recipients.len(), 2, "the unlinked m3 is not in the segment: {body}");
    let row = |user: &str| {
        recipients.iter().find(|r| r["line_user_id"] == user).unwrap_or_else(|| panic!("{user} in {body}"))
    };

    let send = row(USER_1);
    assert_eq!((send["member_id"].clone(), send["decision"].clone()), (json!("m1"), json!("send")));
    assert!(send.get("detail").is_none(), "{send}");
    assert_eq!(send["messages"][0]["type"], "flex");
    assert_eq!(send["messages"][0]["altText"], "山田さん、ようこそ");
    assert_eq!(send["messages"][0]["contents"]["body"]["contents"][0]["text"], "山田さん (gold)");

    let skip = row(USER_2);
    assert_eq!(
        (skip["member_id"].clone(), skip["decision"].clone(), skip["detail"].clone()),
        (json!("m2"), json!("skip"), json!("unfollowed")),
        "{skip}"
    );

    // The table shows the same decisions.
    let out = dirs.renkei(&test.url, &["campaigns", "dry-run", "welcome"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("2 recipient(s): 1 send, 0 deferred, 1 skipped"), "{table}");
    let line = |user: &str| {
        table.lines().find(|l| l.starts_with(user)).unwrap_or_else(|| panic!("{user} in {table}")).to_string()
    };
    assert!(line(USER_1).contains(" send") && line(USER_1).contains("山田さん、ようこそ"), "{table}");
    assert!(line(USER_2).contains("skip (unfollowed)"), "{table}");

    // A dry run sends and stores nothing.
    assert_eq!(test.store.campaign_counts("welcome").await.expect("counts").sent, 0);
    assert!(test.store.campaign_deliveries("welcome", 0, 10).await.expect("deliveries").is_empty());
}

async fn dry_run_of_an_unknown_campaign_exits_1(test: TestStore) {
    let dirs = Dirs::new();
    prepare(&dirs, &test).await;
    let out = dirs.renkei(&test.url, &["campaigns", "dry-run", "nope", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown campaign `nope`") && stderr.contains("welcome"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

/// `welcome` with a goal and a 50 % holdout: the dry run shows who is held
/// out (as the planner would), the report the campaign's stats.
async fn dry_run_shows_the_holdout_and_report_prints_the_stats(test: TestStore) {
    let dirs = Dirs::new();
    dirs.write(
        "campaigns/welcome.yaml",
        &format!("{WELCOME}goal:\n  event: purchase\n  within: 14d\n  value: amount\nholdout: 50%\n"),
    );
    prepare(&dirs, &test).await;
    let out = dirs.renkei(&test.url, &["campaigns", "dry-run", "welcome", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let body: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    let held = renkei_campaigns::Holdout { basis_points: 5_000 }.holds_out("welcome", USER_1);
    let row = body["recipients"].as_array().expect("recipients").iter().find(|r| r["line_user_id"] == USER_1).cloned();
    let row = row.unwrap_or_else(|| panic!("{USER_1} in {body}"));
    let expected = if held { (json!("skip"), json!("holdout")) } else { (json!("send"), Value::Null) };
    assert_eq!((row["decision"].clone(), row.get("detail").cloned().unwrap_or(Value::Null)), expected, "{row}");

    let out = dirs.renkei(&test.url, &["campaigns", "report", "welcome", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    assert_eq!(
        (stats["campaign"].clone(), stats["sent"].clone(), stats["exposed"].clone(), stats["converted"].clone()),
        (json!("welcome"), json!(0), json!(0), json!(0)),
        "{stats}"
    );
    assert_eq!(stats["holdout"], json!({"users": 0, "converted": 0, "conversion_value": 0.0}), "{stats}");
    assert_eq!(stats["lift"], Value::Null, "no exposure yet: {stats}");
    let out = dirs.renkei(&test.url, &["campaigns", "report", "welcome", "--from", "2026-01-01T00:00:00Z"]);
    let table = text(&out.stdout);
    assert!(out.status.success() && table.contains("campaign welcome (active)"), "{table}");
    assert!(table.contains("converted 0 of 0 exposed, value 0") && table.contains("holdout: 0 users"), "{table}");
    let out = dirs.renkei(&test.url, &["campaigns", "report", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown campaign `nope`"), "{}", text(&out.stderr));
}

renkei_test_support::on_both_backends!(
    renkei_test_support::store =>
    dry_run_shows_each_recipient_with_its_decision,
    dry_run_of_an_unknown_campaign_exits_1,
    dry_run_shows_the_holdout_and_report_prints_the_stats,
);
