//! Configuration layering and its error messages.

use renkei::config::Config;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn defaults_load_and_match_the_spec() {
    let config = Config::load_with_env(None, &[]).expect("defaults");
    assert_eq!(config.timezone.0, chrono_tz::Asia::Tokyo);
    assert_eq!(config.database.url, "sqlite://renkei.db");
    assert_eq!(config.server.bind.to_string(), "127.0.0.1:8080");
    assert!(config.server.api_keys.is_empty());
    assert_eq!(config.line.api_base_url, "https://api.line.me");
    assert_eq!(config.paths.segments.to_str(), Some("config/segments"));
}

#[test]
fn file_then_environment_override() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("renkei.toml");
    std::fs::write(
        &file,
        "timezone = \"UTC\"\n[database]\nurl = \"sqlite://file.db\"\n[server]\nbind = \"0.0.0.0:9000\"\n",
    )
    .expect("write");
    let vars = env(&[
        ("RENKEI_DATABASE__URL", "postgres://u:p@db/renkei"),
        ("RENKEI_SERVER__API_KEYS", "[\"k1\",\"k2\"]"),
        ("RENKEI_LINE__CHANNEL_SECRET", "s3cr3t"),
        ("RENKEI_TEST_POSTGRES_URL", "postgres://ignored"),
        ("RENKEI_ROLES__DISPATCHER", "false"),
    ]);
    let config = Config::load_with_env(Some(&file), &vars).expect("layers");
    assert_eq!(config.timezone.0, chrono_tz::UTC, "from the file");
    assert_eq!(config.server.bind.port(), 9000, "from the file");
    assert_eq!(config.database.url, "postgres://u:p@db/renkei", "environment wins");
    assert_eq!(config.server.api_keys.len(), 2);
    assert_eq!(config.line.channel_secret.expose(), "s3cr3t");
    assert!(!config.roles.dispatcher);
    let printed = format!("{config:?}");
    assert!(!printed.contains("s3cr3t") && !printed.contains("k1"), "secrets never print: {printed}");
}

#[test]
fn a_typo_in_the_file_points_at_file_line_col() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("renkei.toml");
    std::fs::write(&file, "[server]\nbind = \"127.0.0.1:8080\"\n  bnd = \"x\"\n").expect("write");
    let error = Config::load_with_env(Some(&file), &[]).expect_err("unknown key").to_string();
    assert!(error.contains(&format!("{}:3:3: server.bnd", file.display())), "{error}");
    assert!(error.contains("unknown field"), "{error}");

    std::fs::write(&file, "timezone = \"Mars/Olympus\"\n").expect("write");
    let error = Config::load_with_env(Some(&file), &[]).expect_err("bad tz").to_string();
    assert!(error.contains(":1:1: timezone") && error.contains("unknown timezone"), "{error}");

    std::fs::write(&file, "[server]\nbind = 8080\n").expect("write");
    let error = Config::load_with_env(Some(&file), &[]).expect_err("bad type").to_string();
    assert!(error.contains(":2:1: server.bind"), "{error}");
}

#[test]
fn a_bad_environment_value_names_the_variable() {
    let error = Config::load_with_env(None, &env(&[("RENKEI_SERVER__BIND", "nowhere")])).expect_err("bad").to_string();
    assert!(error.contains("RENKEI_SERVER__BIND"), "{error}");
    let error = Config::load_with_env(None, &env(&[("RENKEI_DATABASE__URLL", "x")])).expect_err("typo").to_string();
    assert!(error.contains("unknown field") && error.contains("urll"), "{error}");
}

#[test]
fn a_missing_config_file_is_an_error() {
    let error =
        Config::load_with_env(Some(std::path::Path::new("/nonexistent/renkei.toml")), &[]).expect_err("missing");
    assert!(error.to_string().contains("config file not found"));
}
