//! `spawn_app`: the real server on port 0 over a fresh store, per test.

#![allow(dead_code)]

use renkei::app::Application;
use renkei::config::{Config, Secret};
use renkei_core::{Clock, SystemClock};
use renkei_evaluator::Evaluator;
use renkei_store::Store;
use renkei_test_support::{self as test_support, TestStore};
use serde_json::Value;
use std::sync::Arc;

pub const API_KEY: &str = "test-key-0123456789";

pub struct TestApp {
    pub base: String,
    pub store: Arc<dyn Store>,
    pub http: reqwest::Client,
    /// The running segment engine (the evaluator role is on by default).
    pub evaluator: Option<Evaluator>,
    _store_guard: TestStore,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub use renkei_test_support::Backend;

/// Starts the server on a new store; `None` when PostgreSQL is not configured
/// (which `test_support` refuses in CI).
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

/// As [`spawn_app`], with the test's changes to the config applied last.
pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> Option<TestApp> {
    let test_store = match backend {
        Backend::Sqlite => test_support::sqlite().await.expect("sqlite store"),
        Backend::Postgres => test_support::postgres().await.expect("postgres store")?,
    };
    Some(spawn_app_on(test_store, configure).await)
}

/// The config tests start from: the database at `url`, port 0, the test's
/// API key, and no campaigns, rich menus or reply rules unless a test
/// configures them (a missing folder or file means none): the shipped
/// examples name the shipped segments, which tests often replace.
pub fn test_config(url: &str) -> Config {
    let mut config = Config::load_with_env(None, &[]).expect("default config");
    config.server.bind = ([127, 0, 0, 1], 0).into();
    config.server.api_keys = vec![Secret::from(API_KEY)];
    config.database.url = url.to_string();
    let nowhere = std::env::temp_dir().join(format!("renkei-test-none-{}", uuid::Uuid::new_v4().simple()));
    config.paths.campaigns = nowhere.join("campaigns");
    config.paths.rich_menus = nowhere.join("rich_menus.yaml");
    config.paths.replies = nowhere.join("replies");
    config
}

/// As [`spawn_app_with`], on `test_store` (e.g. one with a short write wait).
pub async fn spawn_app_on(test_store: TestStore, configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_at(test_store, Arc::new(SystemClock), configure).await
}

/// As [`spawn_app_on`], with the server's clock `clock` (e.g. a `ManualClock`).
pub async fn spawn_app_at(
    test_store: TestStore,
    clock: Arc<dyn Clock>,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    let mut config = test_config(&test_store.url);
    configure(&mut config);
    let app = Application::build(&config, test_store.store.clone(), clock).await.expect("build app");
    let base = format!("http://{}", app.local_addr());
    let evaluator = app.evaluator();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    TestApp {
        base,
        store: test_store.store.clone(),
        http: renkei::http_client(),
        evaluator,
        _store_guard: test_store,
        _stop: stop,
    }
}

impl TestApp {
    /// The database's URL, for another process (the CLI) to use.
    pub fn db_url(&self) -> String {
        self._store_guard.url.clone()
    }

    /// Stops this server and starts another on the same store with
    /// `configure` applied: a restart (what the outbox holds carries over).
    pub async fn restart(self, configure: impl FnOnce(&mut Config)) -> TestApp {
        let TestApp { _store_guard, _stop, evaluator, .. } = self;
        drop(_stop);
        drop(evaluator);
        // The stop is graceful: let the old roles finish their round.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        spawn_app_on(_store_guard, configure).await
    }

    /// POSTs; a `POST /v1/events` returns once its events are merged
    /// (PostgreSQL's inbox), as the tests go on to read them.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let answer = self.send(self.http.post(format!("{}{path}", self.base)).bearer_auth(API_KEY).json(body)).await;
        self.merged_if_events(path).await;
        answer
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(API_KEY)
            .header("content-type", "application/json")
            .body(body);
        let answer = self.send(request).await;
        self.merged_if_events(path).await;
        answer
    }

    async fn merged_if_events(&self, path: &str) {
        if path == "/v1/events" {
            events_merged(&self.store).await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)).bearer_auth(API_KEY)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.http.delete(format!("{}{path}", self.base)).bearer_auth(API_KEY)).await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }
}

/// Waits until the events appended to the store's inbox (PostgreSQL) are
/// merged into `events`, by the instances' mergers: at most 10 s.
pub async fn events_merged(store: &Arc<dyn Store>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.appended_waiting().await.expect("inbox") > 0 {
        assert!(std::time::Instant::now() < deadline, "appended events not merged within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
