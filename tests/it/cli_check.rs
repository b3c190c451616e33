//! `renkei check` as an operator runs it.

use std::process::Command;

#[test]
fn check_reports_file_line_col_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("gold.yaml");
    std::fs::write(&file, "id: gold\nname: ゴールド\nrule:\n  attribute: rank\n  eq: gold\n  colour: red\n")
        .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_renkei"))
        .arg("check")
        .env("RENKEI_PATHS__SEGMENTS", dir.path())
        .current_dir(dir.path())
        .output()
        .expect("run renkei check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:6:3:", file.display())), "{stderr}");
    assert!(stderr.contains("colour"), "{stderr}");
}

#[test]
fn the_bundled_example_segments_pass_check() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO_BIN_EXE_renkei"))
        .arg("check")
        .env("RENKEI_SERVER__LINK_KEYS", r#"["check-test-link-key-0123456789abcdef"]"#)
        .current_dir(root)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("segments in config/segments"));
}

#[test]
fn check_refuses_tracked_campaigns_without_a_link_key() {
    let root = env!("CARGO_MANIFEST_DIR");
    let check = |keys: &str| {
        Command::new(env!("CARGO_BIN_EXE_renkei"))
            .arg("check")
            .env("RENKEI_SERVER__LINK_KEYS", keys)
            .current_dir(root)
            .output()
            .expect("run")
    };
    let out = check("[]");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.link_keys") && stderr.contains("reservation_reminder"), "{stderr}");
    let out = check(r#"["too-short"]"#);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at least 32 bytes") && !stderr.contains("too-short"), "{stderr}");
}

/// `[webhook]`: every relay problem on its own line, named by key, with no
/// secret's value; a good relay passes and is counted.
#[test]
fn check_reports_webhook_relay_problems_without_secrets() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |toml: &str| {
        let file = dir.path().join("renkei.toml");
        std::fs::write(&file, toml).expect("write");
        Command::new(env!("CARGO_BIN_EXE_renkei"))
            .arg("--config")
            .arg(&file)
            .arg("check")
            .env("RENKEI_SERVER__LINK_KEYS", r#"["check-test-link-key-0123456789abcdef"]"#)
            .current_dir(root)
            .output()
            .expect("run")
    };
    let bad = r#"
[webhook]
reply_owner = "nobody"

[[webhook.relay]]
name = "crm"
url = "https://crm.example/line"
secret = "relay-secret-value"

[[webhook.relay]]
name = "crm"
url = "ftp://other.example/hook"
timeout = "5s"
"#;
    let out = check(bad);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in ["webhook.relay[1].name", "unique", "webhook.relay[1].url", "http or https", "webhook.reply_owner"]
    {
        assert!(stderr.contains(expected), "{expected} missing: {stderr}");
    }
    assert!(!stderr.contains("relay-secret-value"), "{stderr}");

    let good = r#"
[webhook]
reply_owner = "crm"

[[webhook.relay]]
name = "crm"
url = "https://crm.example/line"
secret = "relay-secret-value"
"#;
    let out = check(good);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 webhook relay targets (reply_owner crm)"), "{stdout}");
    assert!(!stdout.contains("relay-secret-value"));
}
