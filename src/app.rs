//! The `renkei serve` process: one axum server carrying the roles that are
//! switched on, and the background tasks those roles run.
//!
//! `Application::build` resolves and validates everything (segments,
//! campaigns, settings, the one LINE client), binds (port 0 works for tests)
//! and builds each role's parts, and only then starts the roles' tasks (in
//! one place, its "roles" section), so a failed build leaves nothing running; `run_until_stopped` serves until Ctrl-C / SIGTERM, then stops
//! within `server.shutdown_grace`: the port closes at once and requests in
//! flight get half the grace to finish while the role tasks stop; then the
//! segment engine stops and saves the users still waiting (the next start
//! queues them again). Connections are bounded by `crate::serve`.
//!
//! | role | crate | routes | background tasks |
//! |---|---|---|---|
//! | `api` | `renkei-api`, `renkei-dashboard` | `/v1/events`, `/v1/members`, `/v1/links…`, `/v1/segments…`, `/v1/campaigns…`, `/t/…`; with `renkei-webhook`'s `/v1/account-link/nonce`, `/v1/links/id-token`; the operator dashboard `/dashboard/…` | – |
//! | `webhook` | `renkei-webhook` | `POST /webhook/line` | webhook worker, webhook relay (one task per `[[webhook.relay]]` target) |
//! | `evaluator` | `renkei-evaluator` | – | segment engine (change worker, timer), start-up recompute |
//! | `scheduler` | `renkei-scheduler` | – | campaign triggers (segment entries, events, cron fires), desired rich menus |
//! | `dispatcher` | `renkei-dispatcher` | – | outbox planner, sender and recorder, rich-menu linker, quota guard |

use crate::config::Config;
use crate::health::Health;
use crate::serve::{ConnectionStats, ServerSettings};
use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use renkei_api::{ApiError, ApiState, EventMerger, IngestMetrics, KeyRateLimits};
use renkei_campaigns::{CampaignSet, RichMenuRules};
use renkei_core::{ChangeListener, Clock};
use renkei_dispatcher::{DispatchMetrics, DispatchSettings, Dispatcher, DispatcherStore, QuotaGuard, RichMenuLinker};
use renkei_evaluator::Evaluator;
use renkei_evaluator::MembershipEngine;
use renkei_line::{ClientOptions, LineClient};
use renkei_scheduler::{CampaignRunner, RunnerStore};
use renkei_segments::SegmentSet;
use renkei_store::Store;
use renkei_webhook::{
    Relay, RelayMetrics, RelaySettings, Replies, WebhookConfig, WebhookState, WorkerHandle, WorkerOptions,
};
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the process-wide routes (`/healthz`, `/metrics`) read: counters and
/// the health prober's last results, never the database itself, so they
/// answer at once however busy the store is.
#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    ingest_metrics: Arc<IngestMetrics>,
    segments: usize,
    evaluator: Option<Evaluator>,
    dispatch_metrics: Arc<DispatchMetrics>,
    /// The webhook relay's, when this instance runs it.
    relay_metrics: Option<Arc<RelayMetrics>>,
    /// Replies made (the webhook role's worker counts them).
    replies: Arc<Replies>,
    connections: Arc<ConnectionStats>,
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    background: Background,
    dispatcher: Option<Arc<Dispatcher>>,
    /// The event merger (api role, PostgreSQL).
    merger: Option<Arc<EventMerger>>,
    server: ServerSettings,
    connections: Arc<ConnectionStats>,
}

/// The background work of the roles switched on, stopped after the server.
///
/// A role's task takes a [`CancellationToken`] (cancelled at shutdown) via
/// [`Background::spawn`]; shutdown waits for it (until the tasks' deadline)
/// before stopping the segment engine, so a task may still report changes
/// while it winds down.
pub struct Background {
    stop: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    webhook_worker: Option<WorkerHandle>,
    evaluator: Option<Evaluator>,
}

impl Background {
    fn new() -> Self {
        Self { stop: CancellationToken::new(), tasks: Vec::new(), webhook_worker: None, evaluator: None }
    }

    /// Runs `task(stop)` on the runtime; it should return soon after `stop` is cancelled.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task(self.stop.child_token()));
        self.tasks.push((name, handle));
    }

    /// Stops the role tasks by `deadline` (aborting those still running
    /// then: their work is safe to redo: claims roll back, leases expire,
    /// deliveries and requests are unique), then the webhook worker.
    pub async fn stop_tasks(&mut self, deadline: Instant) {
        self.stop.cancel();
        for (name, mut handle) in std::mem::take(&mut self.tasks) {
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Ok(())) => tracing::debug!(task = name, "stopped"),
                Ok(Err(error)) => tracing::error!(task = name, %error, "task failed"),
                Err(_) => {
                    tracing::warn!(task = name, "task did not stop in time; aborted");
                    handle.abort();
                }
            }
        }
        if let Some(worker) = self.webhook_worker.take() {
            // Rows it was handling come back after their lease; handling is idempotent.
            worker.abort();
            tracing::info!("webhook worker stopped");
        }
    }

    /// Stops the segment engine by `deadline`, saving what is left waiting.
    pub async fn stop_engine(self, deadline: Instant) {
        if let Some(evaluator) = self.evaluator {
            evaluator.stop_by(deadline).await;
        }
    }
}

/// Loads every segment file, or fails with one `file:line:col: message` line per problem.
pub fn load_segments(dir: &Path) -> anyhow::Result<SegmentSet> {
    SegmentSet::load_dir(dir).map_err(|diagnostics| {
        let mut message = format!("invalid segments in {} (paths.segments); nothing loaded:", dir.display());
        for diagnostic in &diagnostics {
            let _ = write!(message, "\n{diagnostic}");
        }
        anyhow::anyhow!(message)
    })
}

/// A Messaging API client when `line.channel_access_token` is set. LINE Login
/// (ID token verification) lives on the same host as the Messaging API.
pub fn line_client(config: &Config) -> anyhow::Result<Option<LineClient>> {
    let token = config.line.channel_access_token.expose();
    if token.is_empty() {
        return Ok(None);
    }
    let base = config.line.api_base_url.as_str();
    let options = ClientOptions { login_base_url: base.to_string(), ..ClientOptions::default() };
    LineClient::with_options(base, token, options).map(Some).map_err(|e| anyhow::anyhow!("line.api_base_url: {e}"))
}

/// Everything the configuration decides, resolved and validated: nothing
/// has touched the database or started yet.
struct Resolved {
    segments: Arc<SegmentSet>,
    campaigns: Arc<CampaignSet>,
    rich_menus: Arc<RichMenuRules>,
    dispatch: DispatchSettings,
    /// The one LINE client of the process (webhook replies, ID tokens, sends).
    line: Option<LineClient>,
    webhook: WebhookConfig,
    /// `[webhook]`: the relay's targets and retries, who answers reply tokens.
    relay: Arc<RelaySettings>,
    /// The reply rules and `[replies]`, for the webhook worker.
    replies: Arc<Replies>,
    api_keys: Arc<Vec<String>>,
}

impl Resolved {
    fn from_config(config: &Config) -> anyhow::Result<Self> {
        let segments = Arc::new(load_segments(&config.paths.segments)?);
        tracing::info!(segments = segments.len(), dir = %config.paths.segments.display(), "segments loaded");
        let (campaigns, rich_menus) = crate::campaigns::load_or_explain(config, &segments)?;
        tracing::info!(campaigns = campaigns.len(), dir = %config.paths.campaigns.display(), "campaigns loaded");
        let rules = crate::campaigns::load_replies_or_explain(config, &segments)?;
        tracing::info!(rules = rules.len(), dir = %config.paths.replies.display(), "reply rules loaded");
        let replies = crate::campaigns::replies(config, rules, crate::campaigns::link_keys(config, &campaigns)?)?;
        let relay = crate::relay::relay_settings(config)?;
        Ok(Self {
            segments,
            campaigns: Arc::new(campaigns),
            rich_menus: Arc::new(rich_menus),
            dispatch: crate::campaigns::dispatch_settings(config)?,
            line: line_client(config)?,
            webhook: WebhookConfig::new(
                config.line.channel_secret.expose(),
                config.line.login_channel_id.clone(),
                config.line.link_login_url.clone(),
            )
            .with_relay(&relay),
            replies: Arc::new(replies),
            relay: Arc::new(relay),
            api_keys: Arc::new(config.server.api_keys.iter().map(|k| k.expose().to_string()).collect()),
        })
    }
}

/// The dispatcher role's parts, built but not started.
struct DispatchRole {
    dispatcher: Arc<Dispatcher>,
    quota: Arc<QuotaGuard>,
    linker: Arc<RichMenuLinker>,
    /// LINE's statistics per unit, fetched every `dispatch.insight_refresh`.
    insight: Arc<renkei_dispatcher::InsightPoller>,
    line: LineClient,
}

/// Every role's parts, built (the fallible steps done) but not started.
struct Roles {
    engine: Arc<MembershipEngine>,
    metrics: Arc<DispatchMetrics>,
    dispatch: Option<DispatchRole>,
    scheduler: Option<Arc<CampaignRunner>>,
}

impl Roles {
    async fn build(
        config: &Config,
        resolved: &Resolved,
        store: &Arc<dyn Store>,
        clock: &Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        // The engine answers reads (GET /v1/segments) on every instance; only
        // the evaluator role runs it.
        // Every instance inserts events, so every one keeps the tallies.
        let engine = MembershipEngine::new(
            renkei_evaluator::EngineStore::of(store),
            resolved.segments.clone(),
            clock.clone(),
            config.timezone.0,
        );
        let engine = Arc::new(engine.with_tallies().await.context("building the running tallies of events")?);
        let metrics = Arc::new(DispatchMetrics::default());
        let dispatch = match (&resolved.line, config.roles.dispatcher) {
            (Some(line), true) => {
                let quota = Arc::new(
                    QuotaGuard::new(config.dispatch.quota_guard, metrics.clone())
                        .with_leases(store.clone(), format!("quota-{}", uuid::Uuid::new_v4().simple())),
                );
                let settings = resolved.dispatch.clone();
                let dispatcher = Arc::new(Dispatcher::new(
                    DispatcherStore::of(store),
                    line.clone(),
                    resolved.campaigns.clone(),
                    clock.clone(),
                    settings.clone(),
                    metrics.clone(),
                    quota.clone(),
                ));
                let linker = Arc::new(
                    RichMenuLinker::new(
                        store.clone(),
                        line.clone(),
                        clock.clone(),
                        dispatcher.limiters(),
                        metrics.clone(),
                        settings.lease,
                        settings.poll,
                    )
                    .with_channel_default(resolved.rich_menus.default.clone()),
                );
                let insight = Arc::new(renkei_dispatcher::InsightPoller::new(
                    store.clone(),
                    store.clone(),
                    line.clone(),
                    clock.clone(),
                    format!("insight-{}", uuid::Uuid::new_v4().simple()),
                ));
                Some(DispatchRole { dispatcher, quota, linker, insight, line: line.clone() })
            }
            (None, true) => {
                tracing::warn!(
                    "dispatcher role on but line.channel_access_token is empty: deliveries wait in the outbox unsent"
                );
                None
            }
            (_, false) => None,
        };
        let scheduler = if config.roles.scheduler {
            let dispatch_wake = dispatch.as_ref().map_or_else(|| Arc::new(Notify::new()), |d| d.dispatcher.waker());
            let runner = CampaignRunner::new(
                RunnerStore::of(store),
                resolved.campaigns.clone(),
                resolved.rich_menus.clone(),
                clock.clone(),
                crate::campaigns::runner_settings(config),
                metrics.clone(),
                dispatch_wake,
            )
            .await
            .context("starting the campaign scheduler")?;
            Some(Arc::new(runner))
        } else {
            None
        };
        Ok(Self { engine, metrics, dispatch, scheduler })
    }
}

impl Background {
    /// The evaluator role: the engine's worker and timer, the users the last
    /// stop left waiting, and the start-up recompute.
    fn start_evaluator(&mut self, engine: Arc<MembershipEngine>, store: &Arc<dyn Store>) -> Evaluator {
        let pending: Arc<dyn renkei_store::PendingStore> = store.clone();
        let evaluator = Evaluator::start(engine, pending);
        self.spawn("saved re-evaluations", {
            let evaluator = evaluator.clone();
            move |stop| evaluator.resume_pending(stop)
        });
        self.spawn("start-up recompute", {
            let evaluator = evaluator.clone();
            move |stop| evaluator.startup_recompute(stop)
        });
        self.evaluator = Some(evaluator.clone());
        evaluator
    }

    /// The dispatcher role: planners and sender, the rich-menu linker, the quota guard.
    fn start_dispatcher(
        &mut self,
        role: DispatchRole,
        refresh: Duration,
        insight_every: Duration,
        clock: Arc<dyn Clock>,
    ) {
        let DispatchRole { dispatcher, quota, linker, insight, line } = role;
        self.spawn("LINE statistics per unit", move |stop| async move {
            let _ = insight.spawn(insight_every, stop).await;
        });
        self.spawn("quota guard", move |stop| async move {
            let _ = quota.spawn_refresh(line, clock, refresh, stop).await;
        });
        self.spawn("dispatcher", {
            let d = dispatcher.clone();
            move |stop| async move {
                for task in d.spawn(stop) {
                    let _ = task.await;
                }
            }
        });
        self.spawn("rich-menu linker", {
            let wake = dispatcher.waker();
            move |stop| async move {
                let _ = linker.spawn(wake, stop).await;
            }
        });
        tracing::info!("dispatcher started");
    }

    /// The webhook relay: one task per target, woken by the route.
    fn start_relay(&mut self, relay: Relay, webhook: &WebhookState) {
        let wake = webhook.relay_waker();
        let targets = relay.target_count();
        self.spawn("webhook relay", move |stop| async move {
            for task in Arc::new(relay).spawn(wake, stop) {
                let _ = task.await;
            }
        });
        tracing::info!(targets, "webhook relay started");
    }

    /// The scheduler role: desired rich menus synced once, then the triggers.
    fn start_scheduler(&mut self, runner: Arc<CampaignRunner>) {
        self.spawn("rich-menu sync", {
            let runner = runner.clone();
            move |stop| async move {
                match runner.sync_rich_menus_at_start(&stop).await {
                    Ok(Some(n)) => tracing::info!(users = n, "desired rich menus synced for rule segments"),
                    Ok(None) => tracing::info!("desired rich menus synced by another instance"),
                    Err(error) => tracing::warn!(%error, "syncing desired rich menus failed"),
                }
            }
        });
        self.spawn("campaign scheduler", move |stop| async move {
            for task in runner.spawn(stop) {
                let _ = task.await;
            }
        });
    }
}

impl Application {
    /// Resolves and validates everything first (segments, campaigns,
    /// templates, rich menus, `[dispatch]`/`[policy]`, the LINE client, the
    /// listener, the scheduler's campaign records), then starts the roles'
    /// background tasks: an error leaves nothing running. The store must
    /// already be migrated; `config.server.bind` may use port 0.
    pub async fn build(config: &Config, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let resolved = Resolved::from_config(config)?;
        let server = ServerSettings::from_config(config)?;
        let listener = TcpListener::bind(config.server.bind)
            .await
            .with_context(|| format!("cannot listen on {} (server.bind)", config.server.bind))?;
        let roles = Roles::build(config, &resolved, &store, &clock).await?;

        // ---- roles: every background task starts here, and nothing below can fail ----
        let mut background = Background::new();
        let changes: Arc<dyn ChangeListener> = if config.roles.evaluator {
            Arc::new(background.start_evaluator(roles.engine.clone(), &store))
        } else {
            tracing::info!("evaluator role off: segment memberships are kept by another instance");
            Arc::new(renkei_core::NoChangeListener)
        };
        let webhook_state = WebhookState::new(
            renkei_webhook::WebhookStores::of(&store),
            clock.clone(),
            changes.clone(),
            resolved.line.clone(),
            resolved.webhook,
        )
        .with_replies(resolved.replies.clone());
        if config.roles.webhook {
            if config.line.channel_secret.is_empty() {
                tracing::warn!("line.channel_secret is empty: POST /webhook/line refuses every delivery (503)");
            }
            background.webhook_worker =
                Some(renkei_webhook::spawn_worker(webhook_state.clone(), WorkerOptions::default()));
        }
        let relay_metrics = (config.roles.webhook && !resolved.relay.targets.is_empty()).then(|| {
            let metrics = Arc::new(RelayMetrics::new(&resolved.relay));
            let relay = Relay::new(store.clone(), clock.clone(), resolved.relay.clone(), metrics.clone());
            background.start_relay(relay, &webhook_state);
            metrics
        });
        let dispatcher = roles.dispatch.as_ref().map(|d| d.dispatcher.clone());
        if let Some(role) = roles.dispatch {
            let refresh = Duration::from_secs(config.dispatch.quota_refresh.seconds().max(1) as u64);
            let insight_every = Duration::from_secs(config.dispatch.insight_refresh.seconds().max(1) as u64);
            background.start_dispatcher(role, refresh, insight_every, clock.clone());
        }
        if let Some(runner) = roles.scheduler {
            background.start_scheduler(runner);
        }

        let health = Arc::new(Health::new(store.clone(), config.roles.webhook));
        health.check().await;
        background.spawn("health prober", {
            let health = health.clone();
            move |stop| health.probe(stop)
        });

        // ---- routes ----
        let ingest_metrics = Arc::new(IngestMetrics::default());
        let connections = Arc::new(ConnectionStats::new(server.limits.max_connections));
        let app_state = AppState {
            health,
            ingest_metrics: ingest_metrics.clone(),
            segments: resolved.segments.len(),
            evaluator: background.evaluator.clone(),
            dispatch_metrics: roles.metrics,
            relay_metrics,
            replies: resolved.replies.clone(),
            connections: connections.clone(),
        };
        let mut router =
            Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics)).with_state(app_state);
        if config.roles.webhook {
            // Signed by LINE: no bearer key.
            router = router.merge(renkei_webhook::public_router(webhook_state.clone()));
        }
        let mut merger = None;
        if config.roles.api {
            let events_merger = Arc::new(EventMerger::new(store.clone(), changes.clone(), ingest_metrics.clone()));
            if events_merger.needed() {
                background.spawn("event merger", {
                    let events_merger = events_merger.clone();
                    move |stop| events_merger.run(stop.cancelled_owned())
                });
                merger = Some(events_merger.clone());
            }
            let state = ApiState {
                store: renkei_api::ApiStore::of(&store),
                clock,
                changes,
                metrics: ingest_metrics,
                merger: events_merger,
                engine: roles.engine,
                campaigns: resolved.campaigns,
                api_keys: resolved.api_keys,
                key_limits: Arc::new(KeyRateLimits::new(Some(server.rate))),
            };
            let dashboard = renkei_dashboard::DashboardState {
                store: renkei_dashboard::DashboardStore::of(&store),
                campaigns_store: renkei_api::CampaignsStore::of(&store),
                campaigns: state.campaigns.clone(),
                engine: state.engine.clone(),
                clock: state.clock.clone(),
                settings: Arc::new(dashboard_settings(config)),
                dry_run: Arc::new(renkei_dashboard::DryRunSetup {
                    store: renkei_scheduler::DryRunStore::of(&store),
                    global: resolved.dispatch.global.clone(),
                    public_base_url: config.server.public_base_url.clone(),
                }),
                measured: Default::default(),
            };
            // One instance at a time folds the dashboard's old hourly counts.
            let rollup = renkei_dashboard::rollup::Rollup::new(dashboard.store.clone(), dashboard.clock.clone());
            background.spawn("dashboard roll-up", move |stop| rollup.run(stop.cancelled_owned()));
            router = router.merge(renkei_api::router(state, renkei_webhook::api_router(webhook_state)));
            // Signed in with a session cookie, not a bearer key; its own body limit.
            router = router.merge(renkei_dashboard::router(dashboard));
        }
        let router = router
            .fallback(|| async { ApiError::not_found("no such route") })
            .method_not_allowed_fallback(renkei_api::head::method_not_allowed)
            .layer(axum::middleware::from_fn(renkei_api::head::limit_head))
            .layer(axum::middleware::from_fn_with_state(server.body_deadline, renkei_api::limits::limit_body_time))
            .layer(tower_http::trace::TraceLayer::new_for_http());
        Ok(Self { listener, router, background, dispatcher, merger, server, connections })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The running segment engine (evaluator role), e.g. to wait until
    /// reported changes are evaluated.
    pub fn evaluator(&self) -> Option<Evaluator> {
        self.background.evaluator.clone()
    }

    /// The dispatcher (dispatcher role with a channel access token).
    pub fn dispatcher(&self) -> Option<Arc<Dispatcher>> {
        self.dispatcher.clone()
    }

    /// Serves until Ctrl-C / SIGTERM, then stops the background tasks.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` resolves (tests and the demo), then stops within
    /// `server.shutdown_grace`: the listener closes, requests in flight get
    /// half the grace to finish while the role tasks stop, then the segment
    /// engine stops (its worker by three quarters of the grace) and saves
    /// what is left waiting.
    pub async fn run_until(self, stop: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let Self { listener, router, mut background, server, connections, merger, .. } = self;
        let stopping = CancellationToken::new();
        tokio::spawn({
            let stopping = stopping.clone();
            async move {
                stop.await;
                stopping.cancel();
            }
        });
        let half = server.grace / 2;
        let serving =
            crate::serve::serve(listener, router, server.limits, connections, stopping.clone().cancelled_owned(), half);
        let stopping_tasks = async {
            stopping.cancelled().await;
            let started = Instant::now();
            tracing::info!(grace = ?server.grace, "stopping: finishing requests in flight and the roles' tasks");
            background.stop_tasks(started + half).await;
            started
        };
        let ((), started) = tokio::join!(serving, stopping_tasks);
        if let Some(merger) = merger {
            // Batches answered while stopping are merged while the engine still runs.
            let merged = tokio::time::timeout_at(started + server.grace * 3 / 4, merger.merge_all()).await;
            if !matches!(merged, Ok(Ok(_))) {
                tracing::warn!(
                    "appended events left in the inbox at stop; another instance or the next start merges them"
                );
            }
        }
        background.stop_engine(started + server.grace).await;
        tracing::info!(took = ?started.elapsed(), "stopped");
        Ok(())
    }
}

/// `[dashboard]` with what the pages need from the rest of the config.
fn dashboard_settings(config: &Config) -> renkei_dashboard::DashboardSettings {
    let seconds = |d: renkei_core::SpanDuration| Duration::from_secs(u64::try_from(d.seconds()).unwrap_or(0));
    let dashboard = &config.dashboard;
    renkei_dashboard::DashboardSettings {
        language: match dashboard.language {
            crate::config::DashboardLanguage::Ja => renkei_dashboard::Lang::Ja,
            crate::config::DashboardLanguage::En => renkei_dashboard::Lang::En,
        },
        session_idle: seconds(dashboard.session_idle),
        sign_in_max_failures: dashboard.sign_in_max_failures,
        sign_in_window: seconds(dashboard.sign_in_window),
        secure_cookies: config.server.public_base_url.starts_with("https://"),
        timezone: config.timezone.0,
        line_configured: !config.line.channel_access_token.is_empty(),
        quota_guard: config.dispatch.quota_guard,
        ..Default::default()
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}

/// Liveness and database reachability, from the prober's last check (at
/// most [`crate::health::HEALTH_INTERVAL`] old): no query of its own, so it
/// never waits behind the database. `writes` is `blocked` while something
/// holds the writer (`writer_held_ms`), so writes wait and may be refused
/// with `store_busy`.
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let health = &state.health;
    let backend = health.store.backend();
    if health.healthy() {
        let (writes, held_ms) = health.writes();
        let body =
            serde_json::json!({"status": "ok", "database": backend, "writes": writes, "writer_held_ms": held_ms});
        (StatusCode::OK, axum::Json(body))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"status": "unavailable", "database": backend})))
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    state.ingest_metrics.render(&mut out);
    let name = "renkei_segments_configured";
    let _ = writeln!(
        out,
        "# HELP {name} Segments loaded from paths.segments.\n# TYPE {name} gauge\n{name} {}",
        state.segments
    );
    if let Some(evaluator) = &state.evaluator {
        evaluator.render_metrics(&mut out);
    }
    state.dispatch_metrics.render(&mut out);
    state.replies.metrics.render(&mut out);
    if let Some(relay) = &state.relay_metrics {
        relay.render(&mut out);
    }
    // Counted by the health prober each second; left out when unknown.
    let counted = [
        (
            "renkei_webhook_events_pending",
            "Stored LINE webhook events not processed yet.",
            &state.health.webhook_pending,
        ),
        (
            "renkei_events_unmerged",
            "Events appended by POST /v1/events and not merged into events yet (PostgreSQL; counted up to 1,000,000).",
            &state.health.events_unmerged,
        ),
    ];
    for (name, help, count) in counted {
        let count = count.load(Ordering::Relaxed);
        if count >= 0 {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {count}");
        }
    }
    let rows = [
        ("renkei_http_connections_open", "HTTP connections open now.", state.connections.open()),
        (
            "renkei_http_connections_max",
            "HTTP connections open at most (server.max_connections).",
            state.connections.max(),
        ),
    ];
    for (name, help, value) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::RolesConfig;

    fn alive_tasks() -> usize {
        tokio::runtime::Handle::current().metrics().num_alive_tasks()
    }

    fn every_role(dir: &Path) -> Config {
        let tree = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut config = Config::load_with_env(None, &[]).unwrap();
        config.database.url = format!("sqlite://{}", dir.join("renkei.db").display());
        config.server.bind = ([127, 0, 0, 1], 0).into();
        config.paths.segments = tree.join("config/segments");
        config.paths.campaigns = tree.join("config/campaigns");
        config.paths.templates = tree.join("templates");
        config.paths.rich_menus = tree.join("config/rich_menus.yaml");
        config.roles = RolesConfig { api: true, webhook: true, evaluator: true, scheduler: true, dispatcher: true };
        config.server.link_keys = vec!["app-test-link-key-0123456789abcdef0123".into()];
        config
    }

    /// The old build started the evaluator and the webhook worker before
    /// loading the campaigns and reading `[dispatch]`/`[policy]`; failing
    /// there left them running.
    #[tokio::test]
    async fn a_build_that_fails_late_leaves_no_task_running() {
        let dir = tempfile::tempdir().unwrap();
        let config = every_role(dir.path());
        let store = renkei_store::connect(&config.database.url).await.unwrap();
        store.migrate().await.unwrap();
        let clock: Arc<dyn Clock> = Arc::new(renkei_core::SystemClock);

        let mut bad_policy = config.clone();
        bad_policy.policy.quiet_hours_from = "21:00".to_string();
        bad_policy.policy.quiet_hours_to.clear();
        let mut bad_campaign = config.clone();
        bad_campaign.paths.campaigns = dir.path().join("campaigns");
        std::fs::create_dir_all(&bad_campaign.paths.campaigns).unwrap();
        std::fs::write(bad_campaign.paths.campaigns.join("broken.yaml"), "id: broken\nname: [unclosed\n").unwrap();

        let mut no_link_key = config.clone();
        no_link_key.server.link_keys.clear();

        let before = alive_tasks();
        let cases = [
            ("an invalid [policy]", bad_policy),
            ("an invalid campaign file", bad_campaign),
            ("no link key", no_link_key),
        ];
        for (what, bad) in cases {
            let Err(error) = Application::build(&bad, store.clone(), clock.clone()).await else {
                panic!("{what} must fail the build");
            };
            if what == "no link key" {
                let message = format!("{error:#}");
                assert!(message.contains("server.link_keys") && message.contains("reservation_reminder"), "{message}");
            }
            tokio::task::yield_now().await;
            let after = alive_tasks();
            assert!(after <= before, "{what} ({error:#}) left tasks running: {before} before, {after} after");
        }

        // The count does see roles start.
        let app = Application::build(&config, store, clock).await.unwrap();
        assert!(alive_tasks() > before, "a good build starts the roles' tasks");
        app.run_until(async {}).await.unwrap();
    }
}
