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

/// Loads `toml` as the config file (and `vars` as the environment) and
/// returns the error, asserting it names `key` and not `secret`.
fn error_hides(toml: &str, vars: &[(&str, &str)], key: &str, secret: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("renkei.toml");
    std::fs::write(&file, toml).expect("write");
    let error = Config::load_with_env(Some(&file), &env(vars)).expect_err("an invalid config").to_string();
    assert!(error.contains(key), "names {key}: {error}");
    assert!(!error.contains(secret), "the value of {key} is shown: {error}");
    error
}

#[test]
fn a_wrong_api_keys_value_is_not_shown() {
    let error = error_hides("", &[("RENKEI_SERVER__API_KEYS", "k-0f3a9")], "server.api_keys", "k-0f3a9");
    assert!(error.contains("RENKEI_SERVER__API_KEYS") && error.contains("expected a sequence"), "{error}");
    let error = error_hides("[server]\napi_keys = \"k-0f3a9\"\n", &[], "server.api_keys", "k-0f3a9");
    assert!(error.contains(":2:1: server.api_keys") && error.contains("found a string"), "{error}");
    error_hides("[server]\napi_keys = [\"k-1\", 90817]\n", &[], "server.api_keys", "90817");
}

#[test]
fn a_wrong_link_keys_value_is_not_shown() {
    let error = error_hides("", &[("RENKEI_SERVER__LINK_KEYS", "lk-5e2b7")], "server.link_keys", "lk-5e2b7");
    assert!(error.contains("RENKEI_SERVER__LINK_KEYS") && error.contains("expected a sequence"), "{error}");
    error_hides("[server]\nlink_keys = [\"lk-1\", 77120]\n", &[], "server.link_keys", "77120");
    let vars = env(&[("RENKEI_SERVER__LINK_KEYS", r#"["new-key","old-key"]"#)]);
    let config = Config::load_with_env(None, &vars).expect("a list of keys");
    let keys: Vec<&str> = config.server.link_keys.iter().map(|k| k.expose()).collect();
    assert_eq!(keys, ["new-key", "old-key"]);
    assert!(!format!("{config:?}").contains("new-key"), "link keys never print");
}

#[test]
fn a_wrong_channel_access_token_is_not_shown() {
    let error =
        error_hides("[line]\nchannel_access_token = [\"tok-77a1\"]\n", &[], "line.channel_access_token", "tok-77a1");
    assert!(error.contains("expected a string"), "{error}");
    let error = error_hides("[line]\nchannel_access_token = 4412983\n", &[], "line.channel_access_token", "4412983");
    assert!(error.contains(":2:1: line.channel_access_token"), "{error}");
}

#[test]
fn a_syntax_error_on_the_channel_secret_line_is_not_quoted() {
    let error = error_hides("[line]\nchannel_secret = \"9e1c0ffee\n", &[], "line.channel_secret", "9e1c0ffee");
    assert!(error.contains("renkei.toml:2:") && error.contains("not valid TOML"), "{error}");
    let error = error_hides("[line]\nchannel_secret = 9e1c0ffee\n", &[], "line.channel_secret", "9e1c0ffee");
    assert!(error.contains("not valid TOML"), "{error}");
}

#[test]
fn a_bad_database_url_does_not_show_its_password() {
    let url = "postgres://renkei:hunter2@db/renkei";
    error_hides(&format!("[database]\nurl = [\"{url}\"]\n"), &[], "database.url", "hunter2");
    error_hides(&format!("[database]\nurl = \"{url}\nmigrate_on_start = true\n"), &[], "database.url", "hunter2");
}

#[test]
fn secrets_from_the_environment_are_taken_as_written() {
    let vars = env(&[("RENKEI_LINE__CHANNEL_SECRET", "0123456789"), ("RENKEI_LINE__CHANNEL_ACCESS_TOKEN", "true")]);
    let config = Config::load_with_env(None, &vars).expect("digits are a secret too");
    assert_eq!(config.line.channel_secret.expose(), "0123456789");
    assert_eq!(config.line.channel_access_token.expose(), "true");
}
