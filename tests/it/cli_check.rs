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
