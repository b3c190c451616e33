//! Configuration: built-in documented defaults (`config/defaults.toml`), then
//! a TOML file, then `RENKEI_*` environment variables. A bad key or value is
//! an error that names the key, where it came from, and what was expected.

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULTS_TOML: &str = include_str!("../config/defaults.toml");
pub const ENV_PREFIX: &str = "RENKEI_";
const SECTIONS: [&str; 12] = [
    "timezone",
    "database",
    "server",
    "line",
    "paths",
    "roles",
    "log",
    "dispatch",
    "policy",
    "replies",
    "webhook",
    "dashboard",
];

/// A secret string: deserialized like a string, never printed (not even
/// in the error for a value of the wrong type).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

/// What a [`Secret`] of the wrong type reports, in place of its value.
const SECRET_TYPE_ERROR: &str = "invalid type: expected a string";

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret).map_err(|_| serde::de::Error::custom(SECRET_TYPE_ERROR))
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Self(text.to_string())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub timezone: Timezone,
    pub database: DatabaseConfig,
    pub server: ServerConfig,
    pub line: LineConfig,
    pub paths: PathsConfig,
    pub roles: RolesConfig,
    pub log: LogConfig,
    pub dispatch: DispatchConfig,
    pub policy: PolicyConfig,
    pub replies: RepliesConfig,
    pub webhook: WebhookSection,
    pub dashboard: DashboardConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepliesConfig {
    pub link_prompt: String,
    pub link_prompt_button: String,
    pub member_code_ttl: renkei_core::SpanDuration,
    pub loading_after: renkei_core::SpanDuration,
    pub token_life: renkei_core::SpanDuration,
}

/// `[webhook]`: who uses reply tokens, and the relay's targets and retries
/// (validated by `crate::relay::relay_settings`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// "renkei", or the name of the relay target that answers with reply tokens.
    pub reply_owner: String,
    pub relay_retry_base_ms: u64,
    pub relay_retry_max: renkei_core::SpanDuration,
    pub relay_max_attempts: u32,
    pub relay_max_age: renkei_core::SpanDuration,
    pub relay: Vec<RelayTargetConfig>,
}

/// One `[[webhook.relay]]` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayTargetConfig {
    pub name: String,
    pub url: String,
    /// Empty: forward LINE's own signature; else re-sign with this.
    #[serde(default)]
    pub secret: Secret,
    #[serde(default = "default_relay_timeout")]
    pub timeout: renkei_core::SpanDuration,
}

fn default_relay_timeout() -> renkei_core::SpanDuration {
    renkei_core::SpanDuration::from_seconds(5)
}

/// `[dashboard]`: the operator dashboard under `/dashboard/` (api role).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    pub language: DashboardLanguage,
    pub session_idle: renkei_core::SpanDuration,
    pub sign_in_max_failures: u32,
    pub sign_in_window: renkei_core::SpanDuration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DashboardLanguage {
    Ja,
    En,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    pub push_per_second: u32,
    pub multicast_per_second: u32,
    pub rich_menu_link_per_second: u32,
    pub rich_menu_bulk_per_second: u32,
    pub lease: renkei_core::SpanDuration,
    pub batch: u32,
    pub max_in_flight: usize,
    pub planners: usize,
    pub retry_base_ms: u64,
    pub retry_max: renkei_core::SpanDuration,
    pub max_attempts: u32,
    pub misfire_grace: renkei_core::SpanDuration,
    pub quota_guard: bool,
    pub quota_refresh: renkei_core::SpanDuration,
    pub insight_refresh: renkei_core::SpanDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub per_user_cap_max: u32,
    pub per_user_cap_per: renkei_core::SpanDuration,
    pub quiet_hours_from: String,
    pub quiet_hours_to: String,
}

/// An IANA timezone name, checked when the config loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timezone(pub chrono_tz::Tz);

impl<'de> Deserialize<'de> for Timezone {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse::<chrono_tz::Tz>().map(Timezone).map_err(|_| {
            serde::de::Error::custom(format!("unknown timezone {name:?}; expected an IANA name like \"Asia/Tokyo\""))
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub migrate_on_start: bool,
    /// The longest a write waits for the database before answering 503 `store_busy`.
    pub write_wait: renkei_core::SpanDuration,
}

impl DatabaseConfig {
    /// How the store waits ([`DatabaseConfig::write_wait`], at least 1 s).
    pub fn store_options(&self) -> renkei_store::StoreOptions {
        let seconds = u64::try_from(self.write_wait.seconds()).unwrap_or(0).max(1);
        renkei_store::StoreOptions { write_wait: std::time::Duration::from_secs(seconds) }
    }

    /// Opens the configured store with [`DatabaseConfig::store_options`].
    pub async fn connect(&self) -> renkei_store::StoreResult<std::sync::Arc<dyn renkei_store::Store>> {
        renkei_store::connect_with(&self.url, self.store_options()).await
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    pub api_keys: Vec<Secret>,
    /// Tracked-link keys: the first seals, all open.
    pub link_keys: Vec<Secret>,
    pub public_base_url: String,
    /// After SIGTERM: the most time to finish requests, stop the roles and save the engine's queue.
    pub shutdown_grace: renkei_core::SpanDuration,
    pub header_read_timeout: renkei_core::SpanDuration,
    pub body_read_timeout: renkei_core::SpanDuration,
    pub idle_timeout: renkei_core::SpanDuration,
    /// 0: derived from the open-file limit.
    pub max_connections: usize,
    /// Requests per second per API key on `/v1/*` (0 = no limit).
    pub rate_limit_per_second: u32,
    /// Requests one key may send at once above its rate.
    pub rate_limit_burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    pub channel_secret: Secret,
    pub channel_access_token: Secret,
    pub api_base_url: String,
    pub login_channel_id: String,
    pub link_login_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsConfig {
    pub segments: PathBuf,
    pub campaigns: PathBuf,
    pub templates: PathBuf,
    pub rich_menus: PathBuf,
    pub replies: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolesConfig {
    pub api: bool,
    pub webhook: bool,
    pub evaluator: bool,
    pub scheduler: bool,
    pub dispatcher: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults, then `file` (or `./renkei.toml` when `file` is None and it
    /// exists), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(file, &env)
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(file: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let file = match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError(format!("{}: config file not found", path.display())));
            }
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from("renkei.toml")).filter(|p| p.exists()),
        };
        let mut figment = Figment::from(Toml::string(DEFAULTS_TOML));
        if let Some(path) = &file {
            check_syntax(path)?;
            figment = figment.merge(Toml::file_exact(path));
        }
        // figment's Env provider reads the process environment; this reads the
        // given pairs the same way, so tests need not mutate the process.
        figment = figment.merge(figment::providers::Serialized::defaults(env_to_dict(env)));
        figment.extract::<Config>().map_err(|e| ConfigError(describe(e, file.as_deref(), env)))
    }
}

/// Refuses a file that is not TOML with `file:line:col: message`, without
/// quoting the line as figment does (it may hold a secret).
fn check_syntax(path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    let Err(error) = toml::from_str::<toml::Table>(&text) else { return Ok(()) };
    let offset = error.span().map_or(0, |span| span.start.min(text.len()));
    let start = (0..=offset).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let message = error.message().trim().replace('\n', "; ");
    let key = key_on_line(&text, line).map(|key| format!("{key}: ")).unwrap_or_default();
    Err(ConfigError(format!("{}:{line}:{col}: {key}not valid TOML: {message}", path.display())))
}

/// The `section.key` that line `number` (from 1) assigns, if it assigns one.
fn key_on_line(text: &str, number: usize) -> Option<String> {
    let mut section = String::new();
    for line in text.lines().take(number.saturating_sub(1)) {
        if let Some(header) = line.trim_start().strip_prefix('[') {
            section = header.split(']').next().unwrap_or("").trim().to_string();
        }
    }
    let (name, _) = text.lines().nth(number.checked_sub(1)?)?.split_once('=')?;
    let name = name.trim().trim_matches('"');
    let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    plain.then(|| if section.is_empty() { name.to_string() } else { format!("{section}.{name}") })
}

/// Turns `RENKEI_A__B=v` pairs into a nested dictionary, parsing values the
/// way figment's `Env` does (so `["a","b"]` is an array and `true` a bool).
fn env_to_dict(vars: &[(String, String)]) -> figment::value::Dict {
    use figment::value::{Dict, Value};
    let mut root = Dict::new();
    for (name, raw) in vars {
        let Some(stripped) = name.strip_prefix(ENV_PREFIX) else { continue };
        let key = stripped.to_ascii_lowercase().replace("__", ".");
        // Other RENKEI_* variables (RENKEI_TEST_POSTGRES_URL, …) are not config.
        if !SECTIONS.iter().any(|s| key.split('.').next() == Some(s)) {
            continue;
        }
        let parts: Vec<&str> = key.split('.').collect();
        // A secret is taken as written (a token of digits stays a string),
        // unless it is a list (`server.api_keys`).
        let value: Value = if is_secret(&parts) && !raw.trim_start().starts_with('[') {
            Value::from(raw.clone())
        } else {
            raw.parse().unwrap_or_else(|_| Value::from(raw.clone()))
        };
        insert_path(&mut root, &parts, value);
    }
    root
}

fn insert_path(dict: &mut figment::value::Dict, parts: &[&str], value: figment::value::Value) {
    use figment::value::{Dict, Value};
    match parts {
        [] => {}
        [last] => {
            dict.insert(last.to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = dict.entry(first.to_string()).or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            } else {
                let mut inner = Dict::new();
                insert_path(&mut inner, rest, value);
                *entry = Value::from(inner);
            }
        }
    }
}

/// Formats figment errors as `file:line:col: key: problem`, or names the
/// environment variable when that is where the value came from.
fn describe(error: figment::Error, file: Option<&Path>, env: &[(String, String)]) -> String {
    let mut lines = Vec::new();
    for e in error {
        let path = e.path.clone();
        let key = path.join(".");
        let var = format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase());
        let origin = e.metadata.as_ref().map(|m| m.name.to_string()).unwrap_or_default();
        let kind = problem(&e.kind, is_secret(&path));
        let from_env = env.iter().any(|(name, _)| name.eq_ignore_ascii_case(&var));
        let located = match file {
            _ if from_env => format!("environment {var}: {key}: {kind}"),
            Some(file) if origin.contains("TOML") => locate_key(file, &path)
                .map(|(line, col)| format!("{}:{line}:{col}: {key}: {kind}", file.display()))
                .unwrap_or_else(|| format!("{}: {key}: {kind}", file.display())),
            _ => format!("config key {key}: {kind}"),
        };
        lines.push(located);
    }
    lines.join("\n")
}

/// Words that make a key secret wherever they appear in its name
/// (`line.channel_secret`, `line.channel_access_token`, `server.api_keys`,
/// any signing key), so a new secret key is covered without a list to keep.
const SECRET_WORDS: [&str; 4] = ["secret", "token", "key", "password"];

/// True for a key whose value must never appear in a message: one named
/// by [`SECRET_WORDS`], or `database.url` (it may carry a password).
fn is_secret<S: AsRef<str>>(path: &[S]) -> bool {
    let names: Vec<&str> = path.iter().map(AsRef::as_ref).collect();
    names.starts_with(&["database", "url"]) || names.iter().any(|n| SECRET_WORDS.iter().any(|w| n.contains(w)))
}

/// The problem as figment words it, or, for a secret key, with the key's
/// expected type but without anything of the value.
fn problem(kind: &figment::error::Kind, secret: bool) -> String {
    use figment::error::Kind;
    if !secret {
        return kind.to_string();
    }
    let told = match kind {
        Kind::InvalidType(actual, expected) => format!("invalid type: found {}, expected {expected}", type_of(actual)),
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value: found {}, expected {expected}", type_of(actual))
        }
        Kind::Message(message) if message == SECRET_TYPE_ERROR => message.clone(),
        Kind::InvalidLength(..) | Kind::UnknownField(..) | Kind::MissingField(_) | Kind::DuplicateField(_) => {
            kind.to_string()
        }
        _ => "invalid value".to_string(),
    };
    format!("{told} (the value is not shown: it is a secret)")
}

/// The kind of a value, without the value.
fn type_of(actual: &figment::error::Actual) -> String {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a bool".into(),
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer".into(),
        Actual::Float(_) => "a float".into(),
        Actual::Char(_) | Actual::Str(_) => "a string".into(),
        Actual::Bytes(_) => "bytes".into(),
        Actual::Other(_) => "a value".into(),
        other => other.to_string(),
    }
}

/// Finds the line and column of `path` (section…, key) in a TOML file by
/// tracking `[section]` headers: enough for renkei's flat two-level config.
fn locate_key(file: &Path, path: &[String]) -> Option<(usize, usize)> {
    let text = std::fs::read_to_string(file).ok()?;
    let (key, sections) = path.split_last()?;
    let want_section = sections.join(".");
    let mut section = String::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(header) = trimmed.strip_prefix('[') {
            section = header.split(']').next().unwrap_or("").trim().to_string();
            continue;
        }
        let indent = line.len() - trimmed.len();
        let name = trimmed.split(['=', ' ', '\t']).next().unwrap_or("").trim_matches('"');
        if section == want_section && name == key.as_str() {
            return Some((index + 1, indent + 1));
        }
    }
    // An unknown section or key with no line of its own: point at the section.
    None
}
