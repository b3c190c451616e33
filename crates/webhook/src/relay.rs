//! The webhook relay: every webhook body renkei accepted goes on, byte for
//! byte, to each `[[webhook.relay]]` target, with LINE's `x-line-signature`
//! or one made with the target's own secret.
//!
//! The route queues the body in the inbox's transaction (durable before
//! LINE's 200, see `renkei_store::relay`); here one task per target takes
//! the target's lease and posts its queue in order. A 2xx is delivered;
//! anything else (another status, a timeout, a refused connection) is
//! retried with exponential backoff and jitter, the body staying at the head
//! of the target's queue, until `max_attempts` or `max_age`, when it is
//! dead-lettered (kept, counted) and the next body goes. Each target has its
//! own task, client and timeout, so a slow or dead target holds back only
//! itself, and never the webhook's 200. Delivery is at least once: a crash
//! between a target's 2xx and its record sends that body again.

use chrono::{DateTime, Utc};
use renkei_core::{Clock, RetrySchedule};
use renkei_store::{RelayItem, RelayStore, StoreError};
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Who may use reply tokens (`webhook.reply_owner`).
pub const RENKEI_OWNS_REPLIES: &str = "renkei";

/// One `[[webhook.relay]]` target, validated. `Debug` never shows the secret.
#[derive(Clone)]
pub struct RelayTarget {
    pub name: String,
    pub url: reqwest::Url,
    /// Empty: forward LINE's signature; else sign the body with this.
    secret: String,
    /// The whole request's deadline (connect, send, answer).
    pub timeout: Duration,
}

impl fmt::Debug for RelayTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayTarget")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("secret", &if self.secret.is_empty() { "" } else { "***" })
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RelayTarget {
    /// The `x-line-signature` this target gets for `item`.
    pub fn signature(&self, item: &RelayItem) -> String {
        if self.secret.is_empty() { item.signature.clone() } else { renkei_line::sign(&self.secret, &item.body) }
    }
}

/// A `[[webhook.relay]]` entry as configured, before validation.
#[derive(Debug, Clone)]
pub struct TargetSpec<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub secret: &'a str,
    pub timeout: Duration,
}

/// What is wrong with `[webhook]`; never shows a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct RelayConfigError {
    pub key: String,
    pub problem: String,
}

fn config_error(key: impl Into<String>, problem: impl Into<String>) -> RelayConfigError {
    RelayConfigError { key: key.into(), problem: problem.into() }
}

/// The relay's settings, validated.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub targets: Vec<RelayTarget>,
    /// Backoff between attempts, and the attempts before a body is dead-lettered.
    pub retry: RetrySchedule,
    /// A body that fails when older than this is dead-lettered.
    pub max_age: chrono::Duration,
    /// Also look for work this often (bodies other instances took, expired leases).
    pub poll: Duration,
    /// Bodies read per round.
    pub batch: u32,
    /// True when renkei answers with reply tokens (`reply_owner = "renkei"`).
    pub replies_owned: bool,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            retry: RetrySchedule {
                base: Duration::from_secs(1),
                max_delay: Duration::from_secs(300),
                max_attempts: 50,
            },
            max_age: chrono::Duration::hours(24),
            poll: Duration::from_secs(1),
            batch: 32,
            replies_owned: true,
        }
    }
}

impl RelaySettings {
    /// Validates the targets (unique names of letters, digits, `-` and `_`;
    /// http(s) URLs; a timeout of at least 1 s) and `reply_owner` (renkei or
    /// a target's name), reporting every problem.
    pub fn new(specs: &[TargetSpec<'_>], reply_owner: &str) -> Result<Self, Vec<RelayConfigError>> {
        let mut errors = Vec::new();
        let mut targets: Vec<RelayTarget> = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            let key = |field: &str| format!("webhook.relay[{index}].{field}");
            let named = valid_name(spec.name).map_err(|p| errors.push(config_error(key("name"), p))).is_ok();
            if named && targets.iter().any(|t| t.name == spec.name) {
                errors.push(config_error(
                    key("name"),
                    format!("{:?} names two targets; names must be unique", spec.name),
                ));
            }
            let url = valid_url(spec.url).map_err(|p| errors.push(config_error(key("url"), p))).ok();
            if spec.timeout < Duration::from_secs(1) {
                errors.push(config_error(key("timeout"), "must be at least 1s"));
            }
            if let Some(url) = url.filter(|_| named) {
                let (name, secret) = (spec.name.to_string(), spec.secret.to_string());
                targets.push(RelayTarget { name, url, secret, timeout: spec.timeout });
            }
        }
        let replies_owned = reply_owner == RENKEI_OWNS_REPLIES;
        if !replies_owned && !specs.iter().any(|s| s.name == reply_owner) {
            let names: Vec<String> = targets.iter().map(|t| format!("{:?}", t.name)).collect();
            let choices = std::iter::once(format!("{RENKEI_OWNS_REPLIES:?}")).chain(names).collect::<Vec<_>>();
            errors.push(config_error(
                "webhook.reply_owner",
                format!("{reply_owner:?} is neither renkei nor a relay target; expected one of {}", choices.join(", ")),
            ));
        }
        if errors.is_empty() { Ok(Self { targets, replies_owned, ..Self::default() }) } else { Err(errors) }
    }

    /// The target names, for the route to queue bodies for.
    pub fn target_names(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.name.clone()).collect()
    }

    /// When to try `item` again after its attempt failed at `now`, or `None`
    /// to dead-letter it (out of attempts, or too old).
    pub fn retry_at(&self, item: &RelayItem, now: DateTime<Utc>, jitter: f64) -> Option<DateTime<Utc>> {
        let attempts = item.attempts.saturating_add(1);
        if self.retry.exhausted(attempts) || now - item.received_at >= self.max_age {
            return None;
        }
        let delay = chrono::Duration::from_std(self.retry.delay(attempts, jitter)).unwrap_or(chrono::Duration::MAX);
        Some(now.checked_add_signed(delay).unwrap_or(now))
    }
}

fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name != RENKEI_OWNS_REPLIES;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a target name: 1 to 64 letters, digits, '-' or '_' (and not {RENKEI_OWNS_REPLIES:?})"
        ))
    }
}

/// An absolute http(s) URL with a host. The message never quotes the URL
/// (it may carry a token).
fn valid_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("not a valid URL ({e})"))?;
    match (url.scheme(), url.host_str()) {
        ("http" | "https", Some(host)) if !host.is_empty() => Ok(url),
        ("http" | "https", _) => Err("the URL has no host".into()),
        (scheme, _) => Err(format!("scheme {scheme:?}: expected http or https")),
    }
}

/// A target's counters and gauges.
#[derive(Debug, Default)]
struct TargetMetrics {
    delivered: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    /// Bodies waiting, as last counted.
    queue_depth: AtomicU64,
    /// Dead letters kept, as last counted.
    dead_letters: AtomicU64,
}

/// The relay's metrics per target, rendered on `/metrics`.
#[derive(Debug)]
pub struct RelayMetrics {
    targets: Vec<(String, TargetMetrics)>,
}

impl RelayMetrics {
    pub fn new(settings: &RelaySettings) -> Self {
        Self { targets: settings.targets.iter().map(|t| (t.name.clone(), TargetMetrics::default())).collect() }
    }

    fn of(&self, target: &str) -> Option<&TargetMetrics> {
        self.targets.iter().find(|(name, _)| name == target).map(|(_, m)| m)
    }

    /// Prometheus text: one series per target.
    pub fn render(&self, out: &mut String) {
        type Read = fn(&TargetMetrics) -> &AtomicU64;
        let rows: [(&str, &str, &str, Read); 5] = [
            ("renkei_relay_delivered_total", "counter", "webhook bodies a relay target accepted (2xx)", |m| {
                &m.delivered
            }),
            ("renkei_relay_retried_total", "counter", "failed relay attempts to be retried", |m| &m.retried),
            ("renkei_relay_dead_lettered_total", "counter", "webhook bodies given up on for a target", |m| {
                &m.dead_lettered
            }),
            ("renkei_relay_queue_depth", "gauge", "webhook bodies waiting for a relay target", |m| &m.queue_depth),
            ("renkei_relay_dead_letters", "gauge", "dead-lettered webhook bodies kept for a target", |m| {
                &m.dead_letters
            }),
        ];
        if self.targets.is_empty() {
            return;
        }
        for (name, kind, help, read) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (target, metrics) in &self.targets {
                let _ = writeln!(out, "{name}{{target=\"{target}\"}} {}", read(metrics).load(Ordering::Relaxed));
            }
        }
    }
}

/// Delivers every target's queue, one task per target, until `stop`.
pub struct Relay {
    store: Arc<dyn RelayStore>,
    clock: Arc<dyn Clock>,
    settings: Arc<RelaySettings>,
    metrics: Arc<RelayMetrics>,
    /// This process's name in the targets' leases.
    holder: String,
}

/// What a round of a target's work ended with.
enum Round {
    /// Nothing waits: sleep until woken (or the poll).
    Idle,
    /// Another instance holds the target.
    NotHolder,
    /// The head of the queue waits for its retry time.
    RetryAt(DateTime<Utc>),
    /// Go on at once.
    More,
}

impl Relay {
    pub fn new(
        store: Arc<dyn RelayStore>,
        clock: Arc<dyn Clock>,
        settings: Arc<RelaySettings>,
        metrics: Arc<RelayMetrics>,
    ) -> Self {
        let holder = format!("relay-{:016x}", rand::random::<u64>());
        Self { store, clock, settings, metrics, holder }
    }

    /// How many targets it delivers to.
    pub fn target_count(&self) -> usize {
        self.settings.targets.len()
    }

    /// Starts one task per target, each woken by `wake` (a body was
    /// queued) and by the poll, and one that counts the queues every poll
    /// (whichever instance delivers, and while an attempt hangs); all
    /// return soon after `stop`.
    pub fn spawn(self: Arc<Self>, wake: watch::Receiver<u64>, stop: CancellationToken) -> Vec<JoinHandle<()>> {
        let mut tasks: Vec<JoinHandle<()>> = (0..self.settings.targets.len())
            .map(|index| tokio::spawn(self.clone().run_target(index, wake.clone(), stop.clone())))
            .collect();
        tasks.push(tokio::spawn(self.count_queues(stop)));
        tasks
    }

    async fn count_queues(self: Arc<Self>, stop: CancellationToken) {
        loop {
            for target in &self.settings.targets {
                if let Err(error) = self.count(target).await {
                    tracing::debug!(target = %target.name, %error, "relay queue not counted");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.settings.poll) => {}
            }
        }
    }

    async fn run_target(self: Arc<Self>, index: usize, mut wake: watch::Receiver<u64>, stop: CancellationToken) {
        let target = &self.settings.targets[index];
        let client = match http_client(target.timeout) {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(target = %target.name, %error, "relay target has no HTTP client; not relayed");
                return;
            }
        };
        // Without the sender (the routes are gone) only the poll wakes.
        let mut woken = true;
        loop {
            let round = tokio::select! {
                () = stop.cancelled() => break,
                round = self.round(target, &client) => round,
            };
            let pause = match round {
                Ok(Round::More) => continue,
                Ok(Round::RetryAt(at)) => (at - self.clock.now()).to_std().unwrap_or_default().min(self.settings.poll),
                Ok(Round::Idle | Round::NotHolder) => self.settings.poll,
                Err(error) => {
                    tracing::warn!(target = %target.name, %error, "relay cannot reach its queue; retrying");
                    self.settings.poll
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                changed = wake.changed(), if woken => woken = changed.is_ok(),
                () = tokio::time::sleep(pause) => {}
            }
        }
        if let Err(error) = self.store.release_relay_lease(&target.name, &self.holder).await {
            tracing::debug!(target = %target.name, %error, "relay lease not released; it expires");
        }
    }

    /// The lease's length: longer than any one attempt, so the holder
    /// renews it (before each attempt) while it still has it.
    fn lease(&self, target: &RelayTarget) -> chrono::Duration {
        let attempt = chrono::Duration::from_std(target.timeout).unwrap_or(chrono::Duration::MAX);
        chrono::Duration::seconds(30).max(attempt * 2 + chrono::Duration::seconds(10))
    }

    /// Takes or renews the target's lease; until when it is held, or `None`.
    async fn hold(&self, target: &RelayTarget) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = self.clock.now();
        let until = now + self.lease(target);
        let held = self.store.acquire_relay_lease(&target.name, &self.holder, now, until).await?;
        Ok(held.then_some(until))
    }

    /// Posts the target's queue in order, from its head, while attempts succeed.
    async fn round(&self, target: &RelayTarget, client: &reqwest::Client) -> Result<Round, StoreError> {
        let Some(mut held_until) = self.hold(target).await? else { return Ok(Round::NotHolder) };
        let items = self.store.next_relay_items(&target.name, self.settings.batch.max(1)).await?;
        if items.is_empty() {
            return Ok(Round::Idle);
        }
        for item in &items {
            let now = self.clock.now();
            if item.next_attempt_at > now {
                return Ok(Round::RetryAt(item.next_attempt_at));
            }
            // Renewed while at least half of it is left (more than one
            // attempt's timeout): no other instance posts this body meanwhile.
            if held_until - now < self.lease(target) / 2 {
                match self.hold(target).await? {
                    Some(until) => held_until = until,
                    None => return Ok(Round::NotHolder),
                }
            }
            if let Err(error) = post(client, target, item).await {
                self.failed(target, item, &error).await?;
                return Ok(Round::More);
            }
            self.store.relay_delivered(&target.name, item.body_id).await?;
            self.bump(target, |m| &m.delivered);
        }
        Ok(Round::More)
    }

    async fn failed(&self, target: &RelayTarget, item: &RelayItem, error: &str) -> Result<(), StoreError> {
        let now = self.clock.now();
        let retry_at = self.settings.retry_at(item, now, rand::random::<f64>());
        self.store.relay_failed(&target.name, item.body_id, error, retry_at, now).await?;
        let (attempt, body_id) = (item.attempts + 1, item.body_id);
        match retry_at {
            Some(at) => {
                tracing::info!(target = %target.name, body_id, attempt, %error, retry_at = %at, "relay attempt failed");
                self.bump(target, |m| &m.retried);
            }
            None => {
                tracing::warn!(target = %target.name, body_id, attempt, %error, "relay body dead-lettered");
                self.bump(target, |m| &m.dead_lettered);
            }
        }
        Ok(())
    }

    fn bump(&self, target: &RelayTarget, counter: fn(&TargetMetrics) -> &AtomicU64) {
        if let Some(m) = self.metrics.of(&target.name) {
            counter(m).fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn count(&self, target: &RelayTarget) -> Result<(), StoreError> {
        let counts = self.store.relay_counts(&target.name).await?;
        if let Some(m) = self.metrics.of(&target.name) {
            m.queue_depth.store(counts.pending, Ordering::Relaxed);
            m.dead_letters.store(counts.dead, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn http_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        // A redirect would turn the POST into a GET: not delivered.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("renkei-relay/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// One attempt; `Err` says why it failed, without the URL (it may carry a token).
async fn post(client: &reqwest::Client, target: &RelayTarget, item: &RelayItem) -> Result<(), String> {
    let response = client
        .post(target.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-line-signature", target.signature(item))
        .body(item.body.clone())
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                format!("no answer within {:?}", target.timeout)
            } else if e.is_connect() {
                "connection failed".to_string()
            } else {
                e.without_url().to_string()
            }
        })?;
    let status = response.status();
    if status.is_success() { Ok(()) } else { Err(format!("answered {status}")) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::TimeZone;

    fn spec<'a>(name: &'a str, url: &'a str) -> TargetSpec<'a> {
        TargetSpec { name, url, secret: "", timeout: Duration::from_secs(5) }
    }

    #[test]
    fn settings_report_every_problem_by_key_and_never_a_secret() {
        let mut bad_timeout = spec("slow", "http://127.0.0.1:9/x");
        bad_timeout.timeout = Duration::from_millis(10);
        let mut secret = spec("crm", "ftp://other.example/hook");
        secret.secret = "hunter2-secret";
        let specs = [
            spec("crm", "https://crm.example/line"),
            secret,
            spec("", "https://x.example/"),
            spec("bad name", "not a url"),
            bad_timeout,
        ];
        let errors = RelaySettings::new(&specs, "nobody").unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "webhook.relay[1].name",
                "webhook.relay[1].url",
                "webhook.relay[2].name",
                "webhook.relay[3].name",
                "webhook.relay[3].url",
                "webhook.relay[4].timeout",
                "webhook.reply_owner",
            ],
            "{text:#?}"
        );
        assert!(text[0].contains("unique") && text[1].contains("\"ftp\""), "{text:#?}");
        assert!(text[6].contains("\"renkei\", \"crm\""), "{text:#?}");
        assert!(text.iter().all(|t| !t.contains("hunter2")), "{text:#?}");
    }

    #[test]
    fn reply_owner_is_renkei_or_a_target() {
        let specs = [spec("crm", "https://crm.example/line"), spec("bot", "http://127.0.0.1:8081/hook")];
        let owned = RelaySettings::new(&specs, "renkei").unwrap();
        assert!(owned.replies_owned);
        assert_eq!(owned.target_names(), ["crm", "bot"]);
        assert!(!RelaySettings::new(&specs, "bot").unwrap().replies_owned);
        assert!(RelaySettings::new(&[], "renkei").unwrap().targets.is_empty());
        assert_eq!(RelaySettings::new(&[spec("renkei", "https://x.example/")], "renkei").unwrap_err().len(), 1);
    }

    #[test]
    fn a_target_forwards_lines_signature_or_signs_with_its_own_secret() {
        let mut target =
            RelaySettings::new(&[spec("crm", "https://crm.example/")], "renkei").unwrap().targets.remove(0);
        let now = Utc::now();
        let item = RelayItem {
            body_id: 1,
            body: b"{\"events\":[]}".to_vec(),
            signature: "from-line".into(),
            received_at: now,
            attempts: 0,
            next_attempt_at: now,
        };
        assert_eq!(target.signature(&item), "from-line");
        target.secret = "own-secret".into();
        assert_eq!(target.signature(&item), renkei_line::sign("own-secret", &item.body));
        assert!(renkei_line::verify_signature("own-secret", &item.body, &target.signature(&item)));
        assert!(!format!("{target:?}").contains("own-secret"));
    }

    #[test]
    fn failures_back_off_then_dead_letter_by_attempts_or_age() {
        let received = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
        let settings = RelaySettings {
            retry: RetrySchedule { base: Duration::from_secs(1), max_delay: Duration::from_secs(300), max_attempts: 5 },
            max_age: chrono::Duration::hours(24),
            ..RelaySettings::default()
        };
        let item = |attempts| RelayItem {
            body_id: 1,
            body: Vec::new(),
            signature: String::new(),
            received_at: received,
            attempts,
            next_attempt_at: received,
        };
        let now = received + chrono::Duration::minutes(1);
        assert_eq!(settings.retry_at(&item(0), now, 1.0), Some(now + chrono::Duration::seconds(1)));
        assert_eq!(settings.retry_at(&item(2), now, 1.0), Some(now + chrono::Duration::seconds(4)));
        assert_eq!(settings.retry_at(&item(2), now, 0.0), Some(now + chrono::Duration::seconds(2)));
        assert_eq!(settings.retry_at(&item(3), now, 1.0), Some(now + chrono::Duration::seconds(8)));
        assert_eq!(settings.retry_at(&item(4), now, 1.0), None, "the fifth failure is the last");
        let late = received + chrono::Duration::hours(24);
        assert_eq!(settings.retry_at(&item(0), late, 1.0), None, "too old");
    }

    #[test]
    fn metrics_are_per_target() {
        let specs = [spec("crm", "https://crm.example/"), spec("bot", "https://bot.example/")];
        let metrics = RelayMetrics::new(&RelaySettings::new(&specs, "renkei").unwrap());
        metrics.of("bot").unwrap().delivered.fetch_add(3, Ordering::Relaxed);
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(out.contains("renkei_relay_delivered_total{target=\"bot\"} 3"), "{out}");
        assert!(out.contains("renkei_relay_delivered_total{target=\"crm\"} 0"), "{out}");
        assert!(out.contains("# TYPE renkei_relay_queue_depth gauge"), "{out}");
        let mut none = String::new();
        RelayMetrics::new(&RelaySettings::default()).render(&mut none);
        assert!(none.is_empty());
    }
}
