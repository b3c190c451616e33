//! The `renkei serve` process: one axum server carrying the roles that are
//! switched on. `Application::build` binds (port 0 works for tests) and
//! `run_until_stopped` serves until Ctrl-C / SIGTERM.

use crate::config::Config;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use renkei_core::Clock;
use renkei_ingest::{ApiError, IngestMetrics, IngestState};
use renkei_store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What the process-wide routes (`/healthz`, `/metrics`) read.
#[derive(Clone)]
struct AppState {
    store: Arc<dyn Store>,
    ingest_metrics: Arc<IngestMetrics>,
}

pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    /// Builds the router over an already migrated store and binds `config.server.bind`.
    pub async fn build(config: &Config, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let ingest_metrics = Arc::new(IngestMetrics::default());
        let app_state = AppState { store: store.clone(), ingest_metrics: ingest_metrics.clone() };
        let mut router =
            Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics)).with_state(app_state);
        if config.roles.api {
            let api_keys = config.server.api_keys.iter().map(|k| k.expose().to_string()).collect();
            router = router.merge(renkei_ingest::router(IngestState {
                store,
                clock,
                api_keys: Arc::new(api_keys),
                metrics: ingest_metrics,
                changes: Arc::new(renkei_core::NoChangeListener),
            }));
        }
        let router = router
            .fallback(|| async { ApiError::not_found("no such route") })
            .layer(tower_http::trace::TraceLayer::new_for_http());
        let listener = TcpListener::bind(config.server.bind)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (server.bind): {e}", config.server.bind))?;
        Ok(Self { listener, router })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        axum::serve(self.listener, self.router).with_graceful_shutdown(shutdown_signal()).await
    }

    /// Serves until `stop` resolves (tests and the demo).
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        axum::serve(self.listener, self.router).with_graceful_shutdown(stop).await
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

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.ping().await {
        Ok(_) => (StatusCode::OK, axum::Json(serde_json::json!({"status": "ok", "database": state.store.backend()}))),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"status": "unavailable", "database": state.store.backend()})),
            )
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    state.ingest_metrics.render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
