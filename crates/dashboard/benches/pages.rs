//! Every dashboard page at size (issue 15, SPEC §9: p95 ≤ 300 ms at 1M
//! users / 20M events on PostgreSQL). Loads, by SQL on the server: N members
//! (4 in 5 linked, by four methods), N friendships (1 in 10 blocked, changes
//! spread over 30 days), 20·N events (four types over 60 days), five segments'
//! memberships and their transitions over 30 days, a campaign sent to every
//! user (multicasts of 500 LINE accepted; with a goal, so its page measures
//! a million exposures against the purchases) and a small one, deliveries waiting,
//! account-link nonces with outcomes — every table's triggers running, so
//! `dashboard_counts` is what production would hold. Then requests each page
//! (signed in, through the dashboard's router) and prints p50 / p95, and
//! for campaign pages how many views showed the last measurement (its
//! conversions took longer than the page waits for them).
//!
//!   RENKEI_BENCH_POSTGRES_URL=postgres://renkei@127.0.0.1:55432/postgres cargo bench -p renkei-dashboard --bench pages
//!
//! (RENKEI_TEST_POSTGRES_URL works too; RENKEI_BENCH_DASHBOARD_USERS sets N,
//! default 1,000,000; RENKEI_BENCH_DASHBOARD_EVENTS_PER_USER the events per
//! user, default 20 (about 5 GB of disk at N = 1M; no page reads the events
//! but the member look-up, by its index); RENKEI_BENCH_DASHBOARD_REQUESTS the requests per page,
//! default 50.) The database is dropped at the end, unless
//! RENKEI_BENCH_DASHBOARD_KEEP=1; RENKEI_BENCH_DASHBOARD_DB=<its URL> measures
//! such a kept database again without loading.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use http_body_util::BodyExt;
use renkei_campaigns::CampaignSet;
use renkei_core::{Clock, SystemClock};
use renkei_dashboard::{DashboardSettings, DashboardState, DashboardStore, DryRunSetup};
use renkei_evaluator::{EngineStore, MembershipEngine};
use renkei_segments::SegmentSet;
use renkei_store::OperatorRole;
use renkei_test_support::bench::{env_number, postgres_server, smoke_run};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceExt;

const SEGMENTS: [(&str, &str); 5] = [
    ("s2", "id: s2\nname: 購入者\nrule:\n  event: purchase\n  within: 30d\n"),
    ("s3", "id: s3\nname: 閲覧者\nrule:\n  event: page_view\n  within: 7d\n"),
    ("s4", "id: s4\nname: カート放棄\nrule:\n  event: cart_add\n  within: 3d\n"),
    ("s5", "id: s5\nname: レビュー\nrule:\n  event: review\n  within: 60d\n"),
    ("s6", "id: s6\nname: 連携済み\nrule:\n  linked: true\n"),
];
const CAMPAIGNS: [(&str, &str); 3] = [
    // A goal: its page measures a million exposures against the purchases.
    (
        "big",
        "id: big\nname: 全員へ\ntrigger:\n  segment_entered: s2\nmessages:\n  - template: t\n    alt_text: a\n\
         goal:\n  event: purchase\n  within: 14d\n  value: amount\n",
    ),
    (
        "small",
        "id: small\nname: 少数へ\ntrigger:\n  segment_entered: s3\nmessages:\n  - template: t\n    alt_text: a\n",
    ),
    ("later", "id: later\nname: 後で\ntrigger:\n  segment_entered: s4\nmessages:\n  - template: t\n    alt_text: a\n"),
];
const TEMPLATE: &str =
    r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [{"type": "text", "text": "x"}]}}"#;

/// `U` and `i` in 32 hex digits, as SQL.
const USER: &str = "'U' || lpad(to_hex(i), 32, '0')";

/// The statements that load N users (`$1`) at `now` (`$2`), with what each loads.
fn load_statements(events_per_user: i64) -> Vec<(&'static str, String)> {
    let day = "make_interval(days => (i % 30)::int)";
    let mut statements = vec![
        (
            "members",
            "INSERT INTO members (member_id, attributes, created_at, updated_at)
             SELECT 'm' || i, jsonb_build_object('name', 'n' || i), $2, $2 FROM generate_series(1, $1) i"
                .to_string(),
        ),
        (
            "links",
            format!(
                "INSERT INTO links (member_id, line_user_id, method, linked_at)
             SELECT 'm' || i, {USER}, (ARRAY['account_link', 'id_token', 'api', 'import'])[1 + i % 4], $2 - {day}
             FROM generate_series(1, $1) i WHERE i % 5 <> 0"
            ),
        ),
    ];
    // Friendships a fiftieth a statement: the per-row trigger adds each to its
    // hour's row, and one transaction updating one row thousands of times is slow.
    for batch in 0..50 {
        statements.push((
            "friendships",
            format!(
                "INSERT INTO friendships (line_user_id, following, changed_at)
             SELECT {USER}, i % 10 <> 0, $2 - {day} - make_interval(hours => (i % 24)::int)
             FROM generate_series({batch} * ($1 / 50) + 1, ({batch} + 1) * ($1 / 50)) i"
            ),
        ));
    }
    // `events_per_user` events a user, N a statement.
    for batch in 0..events_per_user {
        statements.push((
            "events",
            format!(
                "INSERT INTO events (type, member_id, occurred_at, properties, received_at)
             SELECT (ARRAY['purchase', 'page_view', 'cart_add', 'review'])[1 + (j % 7) % 4], 'm' || (1 + j % $1),
                    $2 - make_interval(secs => (j * 7919 % 5184000)::int),
                    CASE WHEN j % 7 = 0 THEN jsonb_build_object('amount', j % 5000) ELSE '{{}}'::jsonb END, $2
             FROM generate_series({batch} * $1 + 1, ({batch} + 1) * $1) j"
            ),
        ));
    }
    let segments = [("s2", 2), ("s3", 3), ("s4", 4), ("s5", 5), ("s6", 6)];
    for (segment, every) in segments {
        statements.push(("memberships", format!(
            "INSERT INTO segment_memberships (segment_id, line_user_id, entered_at)
             SELECT '{segment}', {USER}, $2 - {day} FROM generate_series(1, $1) i WHERE i % {every} = 0 AND $2 IS NOT NULL"
        )));
        // Entered (the members), and some who entered and left again.
        statements.push((
            "transitions",
            format!(
                "INSERT INTO segment_transitions (segment_id, line_user_id, kind, at, cause)
             SELECT '{segment}', {USER}, 'entered', $2 - {day}, 'recompute' FROM generate_series(1, $1) i
             WHERE i % {every} = 0 OR i % 11 = 0
             UNION ALL
             SELECT '{segment}', {USER}, 'exited', $2 - make_interval(days => (i % 29)::int), 'recompute'
             FROM generate_series(1, $1) i WHERE i % 11 = 0 AND i % {every} <> 0"
            ),
        ));
    }
    statements.extend([
        // `big` to every user, `small` to a hundredth: multicasts of 500, sent over 30 days.
        ("deliveries", format!("INSERT INTO deliveries (campaign_id, trigger_key, recipient_key, line_user_id, member_id,
                                 due_at, messages, context, status, created_at)
             SELECT c, 'entered:' || i, {USER}, {USER}, 'm' || i, $2 - {day}, '[]'::json, '{{}}'::json, 'pending', $2 - {day}
             FROM generate_series(1, $1) i, unnest(ARRAY['big', 'small']) c WHERE c = 'big' OR i % 100 = 0")),
        ("requests", "INSERT INTO send_requests (id, kind, retry_key, messages, recipients, status, attempts,
                                    next_attempt_at, created_at, aggregation_unit)
             SELECT r, 'multicast', gen_random_uuid(), '[]'::json, '[]'::json, 'pending', 1, $2, $2, 'bench'
             FROM generate_series(1, ($1 + $1 / 100) / 500 + 2) r".to_string()),
        ("delivery_sends", "INSERT INTO delivery_sends (delivery_id, request_id, campaign_id, line_user_id, requested_at)
             SELECT d.id, (d.id - 1) / 500 + 1, d.campaign_id, d.line_user_id, d.created_at FROM deliveries d
             WHERE $1 > 0 AND $2 IS NOT NULL".to_string()),
        // LINE accepts them: the trigger counts each request's deliveries per campaign and day.
        ("sent", "UPDATE send_requests r SET status = 'sent', sent_at = $2 - make_interval(days => (r.id % 30)::int),
                    finished_at = $2 WHERE $1 > 0".to_string()),
        ("waiting", format!("INSERT INTO deliveries (campaign_id, trigger_key, recipient_key, line_user_id, due_at, messages,
                                 context, status, created_at)
             SELECT 'later', 'entered:' || i, {USER}, {USER}, $2 + interval '1 day', '[]'::json, '{{}}'::json, 'pending', $2
             FROM generate_series(1, $1) i WHERE i % 20 = 0")),
        // Queue pages of 1,000, as a fire enqueues them.
        ("queue", "INSERT INTO delivery_queue (delivery_id, campaign_id, due_at, delivery_ids, line_user_ids, member_ids,
                                               payload_ofs, size)
             SELECT MIN(id), campaign_id, due_at, ARRAY_AGG(id ORDER BY id), ARRAY_AGG(line_user_id ORDER BY id),
                    ARRAY_AGG(member_id ORDER BY id), ARRAY_AGG(id ORDER BY id), COUNT(*)
             FROM deliveries WHERE campaign_id = 'later' AND $1 > 0 AND $2 IS NOT NULL
             GROUP BY campaign_id, due_at, id / 1000".to_string()),
        ("nonces", "INSERT INTO link_nonces (nonce, member_id, created_at, expires_at, used_at, result)
             SELECT 'n' || i, 'm' || i, $2 - make_interval(mins => (i % 43200)::int),
                    $2 - make_interval(mins => (i % 43200)::int) + interval '10 minutes',
                    CASE WHEN i % 4 <> 0 THEN $2 - make_interval(mins => (i % 43200)::int) + interval '1 minute' END,
                    (ARRAY[NULL, 'ok', 'ok', 'failed'])[1 + i % 4]
             FROM generate_series(1, $1 / 10) i".to_string()),
    ]);
    // What the outbox's writers would have counted as they went.
    statements.extend(renkei_store::RECOUNT_CAMPAIGN_COUNTS.iter().map(|s| ("campaign counts", s.to_string())));
    statements.push(("analyze", "VACUUM ANALYZE".to_string()));
    statements
}

async fn load(url: &str, users: i64, events_per_user: i64) -> Result<(), sqlx::Error> {
    let pool = sqlx::PgPool::connect(url).await?;
    let now = Utc::now();
    for (what, statement) in load_statements(events_per_user) {
        let started = Instant::now();
        let query = sqlx::query(sqlx::AssertSqlSafe(statement.clone()));
        let query = if statement.contains("$1") { query.bind(users).bind(now) } else { query };
        query.execute(&pool).await?;
        println!("  loaded {what} in {:.1} s", started.elapsed().as_secs_f64());
    }
    pool.close().await;
    Ok(())
}

async fn state(store: &Arc<dyn renkei_store::Store>) -> DashboardState {
    let sources = SEGMENTS.iter().map(|(id, text)| (PathBuf::from(format!("{id}.yaml")), text.to_string()));
    let segments = Arc::new(SegmentSet::from_sources(sources).expect("segments"));
    let campaigns = CampaignSet::from_sources(
        CAMPAIGNS.iter().map(|(id, text)| (PathBuf::from(format!("{id}.yaml")), text.to_string())).collect(),
        vec![("t".to_string(), PathBuf::from("t.json.hbs"), TEMPLATE.to_string())],
        &segments,
    )
    .expect("campaigns");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let tz = chrono_tz::Asia::Tokyo;
    let engine = MembershipEngine::new(EngineStore::of(store), segments, clock.clone(), tz);
    DashboardState {
        store: DashboardStore::of(store),
        campaigns_store: renkei_api::CampaignsStore::of(store),
        campaigns: Arc::new(campaigns),
        engine: Arc::new(engine),
        clock,
        settings: Arc::new(DashboardSettings { line_configured: true, ..DashboardSettings::default() }),
        dry_run: Arc::new(DryRunSetup {
            store: renkei_scheduler::DryRunStore::of(store),
            global: Default::default(),
            public_base_url: "https://example.com".into(),
        }),
        measured: Default::default(),
    }
}

/// p50 and p95 of `times` (seconds), sorted in place.
fn percentiles(times: &mut [f64]) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    (at(0.50), at(0.95))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let users: i64 = if smoke_run() { 2_000 } else { env_number("RENKEI_BENCH_DASHBOARD_USERS", 1_000_000) };
        let events_per_user: i64 = env_number("RENKEI_BENCH_DASHBOARD_EVENTS_PER_USER", 20);
        let requests: usize = if smoke_run() { 3 } else { env_number("RENKEI_BENCH_DASHBOARD_REQUESTS", 50) };
        let Some(server) = postgres_server() else {
            println!("PostgreSQL: skipped (set RENKEI_BENCH_POSTGRES_URL)");
            return;
        };
        // A database loaded before (kept with RENKEI_BENCH_DASHBOARD_KEEP=1) is measured again as it is.
        let reused = std::env::var("RENKEI_BENCH_DASHBOARD_DB").ok();
        let keep = reused.is_some() || std::env::var("RENKEI_BENCH_DASHBOARD_KEEP").is_ok_and(|v| v == "1");
        let url = match &reused {
            Some(url) => url.clone(),
            None => renkei_test_support::create_database(&server).await.expect("database"),
        };
        let store = renkei_store::connect(&url).await.expect("connect");
        store.migrate().await.expect("migrate");
        println!("dashboard pages benchmark: {users} users, {} events", users * events_per_user);
        if reused.is_none() {
            let started = Instant::now();
            load(&url, users, events_per_user).await.expect("load");
            println!("loaded in {:.1} s", started.elapsed().as_secs_f64());
        }

        let token = renkei_dashboard::auth::random_token();
        store.create_operator("bench", OperatorRole::Admin, "x", Utc::now()).await.expect("operator");
        println!("database: {url}{}", if keep { " (kept)" } else { "" });
        store
            .create_session(&renkei_dashboard::auth::token_hash(&token), "bench", "csrf", Utc::now())
            .await
            .expect("session");
        let router = renkei_dashboard::router(state(&store).await);
        let pages = [
            "/dashboard/",
            "/dashboard/segments",
            "/dashboard/segments/s2",
            "/dashboard/campaigns",
            "/dashboard/campaigns/small",
            "/dashboard/campaigns/big",
            "/dashboard/links",
            "/dashboard/deliveries",
            "/dashboard/members?q=m123457",
            "/dashboard/operators",
        ];
        println!("{:<32} {:>9} {:>9} {:>9}", "page", "p50 ms", "p95 ms", "max ms");
        for path in pages {
            let mut times = Vec::with_capacity(requests);
            // Campaign pages that showed their last measurement, not a fresh one.
            let mut stale = 0;
            for _ in 0..requests {
                let request = Request::get(path)
                    .header("cookie", format!("renkei_session={token}"))
                    .body(Body::empty())
                    .expect("request");
                let started = Instant::now();
                let response = router.clone().oneshot(request).await.expect("response");
                let status = response.status();
                let body = response.into_body().collect().await.expect("body").to_bytes();
                times.push(started.elapsed().as_secs_f64());
                assert_eq!(status, StatusCode::OK, "{path}: {}", String::from_utf8_lossy(&body));
                stale += usize::from(String::from_utf8_lossy(&body).contains("id=\"measured-at\""));
            }
            let max = times.iter().copied().fold(0.0, f64::max);
            let (p50, p95) = percentiles(&mut times);
            let verdict = if p95 <= 0.300 { "" } else { "  > 300 ms" };
            let measured = if stale > 0 {
                format!("  ({stale} of {requests} showed the last measurement)")
            } else {
                String::new()
            };
            println!("{path:<32} {:>9.1} {:>9.1} {:>9.1}{verdict}{measured}", p50 * 1e3, p95 * 1e3, max * 1e3);
        }
        drop(router);
        drop(store);
        if keep {
            return;
        }
        renkei_test_support::drop_database(&server, &url).await.expect("drop the benchmark's database");
    });
}
