//! Webhooks never wait, other writes wait a bounded time: the webhook inbox
//! is written while the main writer is held (SQLite: its own database file;
//! PostgreSQL: its own connections), a write held back past the write wait
//! fails `Busy`, and `write_state` says when writes are blocked.

use chrono::Utc;
use renkei_core::NewEvent;
use renkei_store::webhook::NewWebhookEvent;
use renkei_store::{EventStore, PgStore, SqliteStore, Store, StoreError, StoreOptions, TestReads, WebhookStore};
use renkei_test_support::TestStore;
use serde_json::json;
use sqlx::{Connection, SqliteConnection};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(1);

fn short_wait() -> StoreOptions {
    StoreOptions { write_wait: WAIT }
}

fn webhook(id: &str) -> NewWebhookEvent {
    NewWebhookEvent {
        webhook_event_id: Some(id.to_string()),
        event_type: "follow".into(),
        body: json!({"type": "follow", "webhookEventId": id, "timestamp": 1}),
    }
}

fn event(id: &str) -> NewEvent {
    let value = json!({"event_id": id, "type": "purchase", "member_id": "m1", "occurred_at": "2026-11-23T10:00:00Z"});
    NewEvent::parse(&value).expect("a valid event")
}

/// A fresh directory with the path of a database in it.
fn database() -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("renkei-busy-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let url = format!("sqlite://{}", dir.join("renkei.db").display());
    (dir, url)
}

/// A write refused `Busy` after about the write wait: not sooner (it did
/// wait), not much later (the bound holds), and nothing else.
fn assert_busy_within_wait<T: std::fmt::Debug>(result: Result<T, StoreError>, waited: Duration) {
    assert!(matches!(result, Err(StoreError::Busy(_))), "{result:?}");
    assert!(waited >= WAIT.mul_f64(0.9) && waited < WAIT * 3, "refused after {waited:?}, write wait {WAIT:?}");
}

/// Waits (at most a second) for `store` to say writes are not blocked: a
/// connection goes back to its pool on a task of its own, just after use.
async fn assert_unblocked_soon(store: &dyn Store) {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let state = store.write_state().await.expect("write state");
        if !state.blocked {
            return;
        }
        assert!(Instant::now() < deadline, "writes still blocked: {state:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_released_claim_is_not_an_attempt(store: TestStore) {
    store.insert_webhook_events(&[webhook("A")], Utc::now()).await.expect("insert");
    let lease = chrono::Duration::seconds(30);
    let claimed = store.claim_webhook_events(Utc::now(), lease, 10).await.expect("claim");
    assert_eq!(claimed[0].attempts, 1);
    store.release_webhook_event(claimed[0].id).await.expect("release");
    // Claimable again at once (the lease ended), and still on its first attempt.
    let again = store.claim_webhook_events(Utc::now(), lease, 10).await.expect("claim again");
    assert_eq!((again.len(), again[0].id, again[0].attempts), (1, claimed[0].id, 1));
    store.finish_webhook_event(again[0].id, Utc::now(), None).await.expect("finish");
    store.release_webhook_event(again[0].id).await.expect("release a finished row: nothing");
    assert_eq!(store.get_webhook_event("A").await.expect("get").expect("row").attempts, 1);
    assert_eq!(store.pending_webhook_events().await.expect("pending"), 0);
}

renkei_test_support::on_both_backends!(
    renkei_test_support::store =>
    a_released_claim_is_not_an_attempt,
);

#[tokio::test]
async fn sqlite_takes_webhooks_while_its_writer_is_held_and_refuses_other_writes_in_time() {
    let (dir, url) = database();
    let store = SqliteStore::connect_with(&url, short_wait()).await.expect("store");
    store.migrate().await.expect("migrate");
    assert!(dir.join("renkei-webhook.db").is_file(), "the inbox has its own file beside the database");

    // A long write (as an import's transaction) holds the writer.
    let mut long = store.writer_pool().begin().await.expect("take the writer");
    sqlx::query("INSERT INTO members (member_id, attributes, created_at, updated_at) VALUES ('m0', '{}', 0, 0)")
        .execute(&mut *long)
        .await
        .expect("write");
    let started = Instant::now();
    let ids = store.insert_webhook_events(&[webhook("W1")], Utc::now()).await.expect("the webhook is stored");
    assert!(ids[0].is_some());
    assert!(started.elapsed() < Duration::from_secs(2), "the webhook waited {:?}", started.elapsed());

    let started = Instant::now();
    let refused = store.insert_events(&[event("e1")], Utc::now()).await;
    assert_busy_within_wait(refused, started.elapsed());
    let state = store.write_state().await.expect("write state");
    assert!(state.blocked && state.held_ms >= 1_000, "{state:?}");

    long.rollback().await.expect("release the writer");
    assert_unblocked_soon(&store).await;
    store.insert_events(&[event("e1")], Utc::now()).await.expect("writes go through again");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sqlite_sees_a_lock_another_process_holds() {
    let (dir, url) = database();
    let store = SqliteStore::connect_with(&url, short_wait()).await.expect("store");
    store.migrate().await.expect("migrate");
    assert_unblocked_soon(&store).await;

    // Another connection of its own (as `renkei import` in another process) takes the file's write lock.
    let mut other = SqliteConnection::connect(&url).await.expect("other connection");
    sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await.expect("lock");
    let state = store.write_state().await.expect("state");
    assert!(state.blocked, "{state:?}");
    let started = Instant::now();
    store.insert_webhook_events(&[webhook("W1")], Utc::now()).await.expect("the webhook is stored");
    assert!(started.elapsed() < Duration::from_secs(2), "the webhook waited {:?}", started.elapsed());
    let started = Instant::now();
    let refused = store.insert_events(&[event("e1")], Utc::now()).await;
    assert_busy_within_wait(refused, started.elapsed());

    sqlx::query("COMMIT").execute(&mut other).await.expect("unlock");
    assert_unblocked_soon(&store).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn webhook_events_of_an_older_sqlite_database_move_to_the_inbox() {
    let (dir, url) = database();
    let store = SqliteStore::connect(&url).await.expect("store");
    store.migrate().await.expect("migrate");
    // As a database from before the inbox had its own file: rows in the main one.
    sqlx::query(
        "INSERT INTO webhook_events (id, webhook_event_id, type, body, received_at, attempts)
         VALUES (41, 'OLD', 'follow', '{\"type\":\"follow\"}', 0, 2)",
    )
    .execute(store.writer_pool())
    .await
    .expect("old row");
    store.migrate().await.expect("migrate again: moves the rows");
    store.migrate().await.expect("a third time: nothing left to move");
    let moved = store.get_webhook_event("OLD").await.expect("get").expect("moved");
    assert_eq!((moved.id, moved.attempts), (41, 2));
    let left: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM webhook_events").fetch_one(store.writer_pool()).await.expect("count");
    assert_eq!(left, 0);
    assert_eq!(store.insert_webhook_events(&[webhook("OLD")], Utc::now()).await.expect("redelivery"), vec![None]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_takes_webhooks_while_a_lock_holds_writes_and_refuses_them_in_time() {
    let Some(server) = renkei_test_support::postgres_server_url() else { return };
    let url = renkei_test_support::create_database(&server).await.expect("database");
    // The state is looked at while a write waits: a wait longer than `BLOCKED_AFTER`.
    let wait = Duration::from_secs(3);
    let store =
        std::sync::Arc::new(PgStore::connect_with(&url, StoreOptions { write_wait: wait }).await.expect("store"));
    store.migrate().await.expect("migrate");

    // A long transaction (as an import's) holds a lock every event insert needs.
    let mut long = store.pool().begin().await.expect("begin");
    sqlx::query("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE").execute(&mut *long).await.expect("lock");
    let started = Instant::now();
    store.insert_webhook_events(&[webhook("W1")], Utc::now()).await.expect("the webhook is stored");
    assert!(started.elapsed() < Duration::from_secs(2), "the webhook waited {:?}", started.elapsed());

    let writer = store.clone();
    let started = Instant::now();
    let write = tokio::spawn(async move { writer.insert_events(&[event("e1")], Utc::now()).await });
    let deadline = Instant::now() + wait;
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = store.write_state().await.expect("state").blocked;
    }
    assert!(seen, "write_state never said blocked while a write waited on a lock");
    let refused = write.await.expect("join");
    let waited = started.elapsed();
    assert!(matches!(refused, Err(StoreError::Busy(_))), "{refused:?}");
    assert!(waited >= wait.mul_f64(0.9) && waited < wait * 2, "refused after {waited:?}");
    long.rollback().await.expect("unlock");
    store.insert_events(&[event("e1")], Utc::now()).await.expect("writes go through again");
    assert_unblocked_soon(store.as_ref()).await;
    store.pool().close().await;
    drop(store);
    let mut admin = sqlx::PgConnection::connect(&server).await.expect("admin");
    let name = url.rsplit('/').next().expect("name").to_string();
    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await.expect("drop");
}
