//! The crash test ("nothing twice": a user never gets the same campaign
//! message twice for one trigger, across restarts): `renkei serve` is killed with
//! SIGKILL in the middle of a 10,000-recipient campaign, restarted on the same
//! database, and every recipient is accepted by LINE exactly once.
//!
//! The LINE simulator runs in the test process, so it outlives both server
//! processes and remembers the retry keys the first one used; it loses 5% of
//! its responses (accepted, then the connection is dropped) and answers
//! slowly, so requests are both in flight and unrecorded when the kill comes.
//! The restarted server takes the killed one's claimed work over once its
//! lease (`RENKEI_DISPATCH__LEASE=3s`) has passed, with the same retry keys:
//! LINE answers 409 for the ones it had already accepted.

use renkei_line_sim::{Endpoint, Faults, LineSim, SimConfig, SimHandle};
use renkei_test_support as test_support;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RECIPIENTS: usize = 10_000;
pub(crate) const API_KEY: &str = "crash-test-key-0123456789";
const CAMPAIGN: &str = "promo";
/// Kill once at least this many recipients were accepted…
const KILL_AFTER: u64 = 1_500;
/// …and the kill only proves something if fewer than this were.
const KILL_BEFORE: u64 = 8_000;

/// One crash test (or SIGTERM test, `server.rs`) at a time: each drives a server at LINE's full push rate,
/// and the kill point must not drift because two compete for 2 cores.
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_campaign_then_restart_accepts_each_recipient_exactly_once_sqlite() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("renkei.db").display());
    crash_and_resume(dir.path(), &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_campaign_then_restart_accepts_each_recipient_exactly_once_postgres() {
    let Some(server) = test_support::postgres_server_url() else { return };
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = test_support::create_database(&server).await.expect("create a PostgreSQL database");
    crash_and_resume(dir.path(), &url).await;
    test_support::drop_database(&server, &url).await.expect("drop the test's database");
}

pub(crate) fn user(i: usize) -> String {
    format!("U{i:032x}")
}

/// A `renkei serve` child process, killed (SIGKILL) when dropped so a failing
/// test never leaves a server behind.
pub(crate) struct Server {
    pub(crate) child: Option<Child>,
    log: PathBuf,
}

impl Server {
    pub(crate) fn start(config: &Path, log: PathBuf) -> Self {
        Self::start_with(config, log, &[])
    }

    /// As [`Server::start`], with more environment variables (configuration).
    pub(crate) fn start_with(config: &Path, log: PathBuf, env: &[(&str, &str)]) -> Self {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = renkei_command(config)
            .arg("serve")
            .env("RENKEI_DISPATCH__LEASE", "3s")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start renkei serve");
        Self { child: Some(child), log }
    }

    /// SIGKILL (`Child::kill` on Unix), then reap.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the server");
            let status = child.wait().expect("reap the server");
            assert!(!status.success(), "the server was killed, not stopped: {status:?}");
        }
    }

    /// Fails with the server's log when it has exited on its own.
    pub(crate) fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("renkei serve exited early ({status}):\n{}", self.log_tail());
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn renkei_command(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_renkei"));
    command.arg("--config").arg(config).current_dir(config.parent().expect("config dir"));
    command
}

/// Config, segment, campaign and template files in `dir`; returns the config path.
pub(crate) fn write_config(dir: &Path, db_url: &str, bind: &str, sim: &SimHandle) -> PathBuf {
    let segments = dir.join("segments");
    let campaigns = dir.join("campaigns");
    let templates = dir.join("templates");
    for d in [&segments, &campaigns, &templates] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::write(segments.join("linked.yaml"), "id: linked\nname: 連携済み\nrule:\n  linked: true\n")
        .expect("segment");
    std::fs::write(
        campaigns.join("promo.yaml"),
        "id: promo\nname: クーポン\ntrigger:\n  event: promo_requested\nmessages:\n  - template: promo\n    alt_text: \"{{member.name}}さん、クーポンです\"\n",
    )
    .expect("campaign");
    // Personalised: every recipient gets their own push.
    std::fs::write(
        templates.join("promo.json.hbs"),
        r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [
  {"type": "text", "text": "{{member.name}}さん専用クーポン: {{line_user_id}}", "wrap": true}]}}"#,
    )
    .expect("template");
    let config = dir.join("renkei.toml");
    let text = format!(
        r#"timezone = "Asia/Tokyo"

[database]
url = "{db_url}"

[server]
bind = "{bind}"
api_keys = ["{API_KEY}"]
public_base_url = "http://{bind}"

[line]
channel_secret = "{secret}"
channel_access_token = "{token}"
api_base_url = "{base}"

[paths]
segments = "{segments}"
campaigns = "{campaigns}"
templates = "{templates}"
rich_menus = "{rich_menus}"

[log]
level = "info"
"#,
        secret = sim.channel_secret(),
        token = sim.access_token(),
        base = sim.base_url(),
        segments = segments.display(),
        campaigns = campaigns.display(),
        templates = templates.display(),
        rich_menus = dir.join("no_rich_menus.yaml").display(),
    );
    std::fs::write(&config, text).expect("config");
    config
}

/// Members m0..m{n} named 会員{i}, each linked to [`user`]`(i)`, imported
/// with `renkei import members`; returns its summary.
pub(crate) fn import_members(config: &Path, dir: &Path, n: usize) -> String {
    let mut csv = String::from("member_id,line_user_id,name\n");
    for i in 0..n {
        let _ = writeln!(csv, "m{i},{},会員{i}", user(i));
    }
    let csv_path = dir.join("members.csv");
    std::fs::write(&csv_path, csv).expect("members csv");
    let out = renkei_command(config).args(["import", "members"]).arg(&csv_path).output().expect("run import");
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One `promo_requested` event per member m0..m{n}, in batches of 1,000,
/// each batch to the next server of `bases`; every one accepted.
pub(crate) async fn post_promo_events(http: &reqwest::Client, bases: &[String], n: usize) {
    let occurred_at = chrono::Utc::now().to_rfc3339();
    for batch in 0..n / 1_000 {
        let events: Vec<Value> = (batch * 1_000..(batch + 1) * 1_000)
            .map(|i| {
                json!({"event_id": format!("promo-{i}"), "type": "promo_requested", "member_id": format!("m{i}"),
                       "occurred_at": occurred_at})
            })
            .collect();
        let response = http
            .post(format!("{}/v1/events", bases[batch % bases.len()]))
            .bearer_auth(API_KEY)
            .json(&json!({"events": events}))
            .send()
            .await
            .expect("POST /v1/events");
        assert_eq!(response.status().as_u16(), 200, "batch {batch}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body, json!({"accepted": 1_000, "duplicates": 0}), "batch {batch}");
    }
}

pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("addr").port()
}

/// Polls `check` every 10 ms until it returns `Some`, failing after `limit`.
pub(crate) async fn wait_for<T>(
    what: &str,
    limit: Duration,
    server: &mut Server,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        server.assert_running();
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}\n{}", server.log_tail());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Requests the simulator accepted (answered 2xx, or accepted then dropped):
/// the pushes plus a few quota reads; 409s are not counted.
fn accepted_requests(sim: &SimHandle) -> u64 {
    let c = sim.counters();
    c.accepted + c.dropped
}

pub(crate) async fn get_json(http: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let response = http.get(url).bearer_auth(API_KEY).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

async fn crash_and_resume(dir: &Path, db_url: &str) {
    let started = Instant::now();
    let sim = LineSim::spawn(SimConfig::default()).await.expect("LINE simulator");
    // Slow answers keep requests in flight; 5% of accepted sends lose their response.
    sim.set_faults(Faults { error_rate: 0.0, latency: Duration::from_millis(15), drop_rate: 0.05 });
    let bind = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{bind}");
    let config = write_config(dir, db_url, &bind, &sim);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");

    // 10,000 members, each linked to a LINE user, imported before the server starts.
    let summary = import_members(&config, dir, RECIPIENTS);
    assert!(summary.contains(&format!("{RECIPIENTS} created")), "{summary}");
    assert!(summary.contains(&format!("{RECIPIENTS} linked")), "{summary}");

    let mut server = Server::start(&config, dir.join("serve-1.log"));
    wait_for("the first server to be healthy", Duration::from_secs(60), &mut server, async || {
        let (status, _) = get_json(&http, &format!("{base}/healthz")).await?;
        (status == 200).then_some(())
    })
    .await;
    // Event triggers react to events stored after the first start: wait until
    // the scheduler has recorded where "now" is before sending any.
    let store = renkei_store::connect(db_url).await.expect("open the server's database");
    wait_for("the event trigger to start", Duration::from_secs(30), &mut server, async || {
        store.get_cursor("campaigns.events").await.ok().flatten().map(|_| ())
    })
    .await;

    // One `promo_requested` event per member, in batches of 1,000.
    post_promo_events(&http, std::slice::from_ref(&base), RECIPIENTS).await;

    // SIGKILL once LINE has accepted some, but not all, of the pushes.
    // Counted in recipients: the accepted requests include the quota guard's reads.
    wait_for("LINE to accept the first pushes", Duration::from_secs(120), &mut server, async || {
        (distinct_recipients(&sim).len() >= KILL_AFTER as usize).then_some(())
    })
    .await;
    server.kill();
    let at_kill = accepted_requests(&sim);
    let conflicts_at_kill = sim.counters().conflicts;
    let before_kill = distinct_recipients(&sim).len();
    let recorded = store.campaign_counts(CAMPAIGN).await.expect("counts at the kill");
    println!(
        "killed the server (SIGKILL) after {:.1?}: LINE had accepted {before_kill} recipients ({at_kill} requests, \
         {conflicts_at_kill} 409s so far); the database had {} recorded as sent, {} requested (in flight or unrecorded), \
         {} pending (of {} deliveries enqueued)",
        started.elapsed(),
        recorded.sent,
        recorded.requested,
        recorded.pending,
        recorded.sent + recorded.requested + recorded.pending,
    );
    assert!(recorded.sent < RECIPIENTS as u64, "the kill must land mid-campaign: {recorded:?}");
    assert!(
        (KILL_AFTER as usize..KILL_BEFORE as usize).contains(&before_kill),
        "the kill must land mid-campaign: {before_kill} of {RECIPIENTS} accepted"
    );

    // Restart on the same database; the killed instance's leases run out and its work is retaken.
    let mut server = Server::start(&config, dir.join("serve-2.log"));
    let restarted = Instant::now();
    wait_for("all recipients to be accepted after the restart", Duration::from_secs(120), &mut server, async || {
        (accepted_requests(&sim) >= RECIPIENTS as u64 && distinct_recipients(&sim).len() >= RECIPIENTS).then_some(())
    })
    .await;
    // The outcomes are recorded after LINE answers: wait for the stats to catch up.
    let stats = wait_for("stats to show every send", Duration::from_secs(60), &mut server, async || {
        let (status, body) = get_json(&http, &format!("{base}/v1/campaigns/{CAMPAIGN}/stats")).await?;
        (status == 200 && body["pending"] == 0).then_some(body)
    })
    .await;
    let counters = sim.counters();
    println!(
        "after the restart: all {RECIPIENTS} recipients accepted {:.1?} later ({:.1?} in all); \
         the restart got {} 409s (retry keys LINE had already accepted; {} in all), {} responses dropped by the simulator, {} 429s",
        restarted.elapsed(),
        started.elapsed(),
        counters.conflicts - conflicts_at_kill,
        counters.conflicts,
        counters.dropped,
        counters.rate_limited,
    );

    // Exactly once: every recipient is in exactly one accepted push, none in a multicast.
    let requests = sim.requests();
    assert!(requests.iter().all(|r| r.endpoint != Endpoint::Multicast), "personalised messages go by push");
    let per_user = distinct_recipients(&sim);
    let twice: Vec<(&String, &usize)> = per_user.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "{} recipients were accepted more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(per_user.len(), RECIPIENTS);
    for i in 0..RECIPIENTS {
        assert_eq!(per_user.get(&user(i)), Some(&1), "recipient {i}");
    }
    // Each got their own message.
    for request in requests.iter().filter(|r| r.endpoint == Endpoint::Push).take(200) {
        let to = &request.recipients[0];
        let i = usize::from_str_radix(&to[1..], 16).expect("hex user id");
        assert_eq!(request.messages[0]["altText"], format!("会員{i}さん、クーポンです"), "{to}");
    }
    assert!(counters.conflicts > 0, "lost responses are re-sent with their retry key and answered 409");

    assert_eq!(stats["sent"], RECIPIENTS, "{stats}");
    assert_eq!((stats["failed"].clone(), stats["skipped"].clone()), (json!(0), json!(0)), "{stats}");
    server.kill();
}

/// Accepted push/multicast requests per recipient.
pub(crate) fn distinct_recipients(sim: &SimHandle) -> HashMap<String, usize> {
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for request in sim.requests() {
        if matches!(request.endpoint, Endpoint::Push | Endpoint::Multicast) {
            for to in request.recipients {
                *per_user.entry(to).or_default() += 1;
            }
        }
    }
    per_user
}
