//! Campaign stats at size (issue 14): `GET /v1/campaigns/{id}/stats` (the
//! same `campaign_stats` as `renkei campaigns report`) of a campaign sent to
//! N users with a goal and a 10 % holdout, on PostgreSQL. The outbox is
//! filled by SQL as the dispatcher leaves it (multicasts of 500 accepted by
//! LINE, holdout deliveries skipped), and a fifth of the users make a goal
//! purchase a day later.
//!
//!   RENKEI_BENCH_POSTGRES_URL=postgres://renkei@127.0.0.1:55432/postgres cargo bench --bench campaign_stats
//!
//! (RENKEI_TEST_POSTGRES_URL works too; RENKEI_BENCH_STATS_USERS sets N,
//! default 1,000,000.)

use chrono::{DateTime, Utc};
use renkei_api::CampaignsStore;
use renkei_api::campaigns::{Period, campaign_stats};
use renkei_campaigns::CampaignSet;
use renkei_segments::SegmentSet;
use renkei_test_support as test_support;
use renkei_test_support::bench::{env_number, postgres_server, smoke_run};
use renkei_test_support::measure::peak_rss_mb;
use std::path::PathBuf;
use std::time::Instant;

const CAMPAIGN: &str = "id: bench\nname: bench\ntrigger:\n  segment_entered: buyers\nmessages:\n  - template: t\n    alt_text: a\ngoal:\n  event: purchase\n  within: 14d\n  value: amount\nholdout: 10%\n";
const TEMPLATE: &str =
    r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [{"type": "text", "text": "x"}]}}"#;

/// The outbox and events of a campaign sent to `users` at `at`.
async fn fill(url: &str, users: i64, at: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let pool = sqlx::PgPool::connect(url).await?;
    let statements = [
        "INSERT INTO send_requests (id, kind, retry_key, messages, recipients, status, attempts, next_attempt_at,
                                    created_at, sent_at, finished_at, aggregation_unit)
         SELECT r, 'multicast', gen_random_uuid(), '[]'::json, '[]'::json, 'sent', 1, $1, $1,
                $1 + make_interval(secs => r), $1 + make_interval(secs => r), 'bench'
         FROM generate_series(1, $2 / 500 + 1) r",
        "INSERT INTO deliveries (campaign_id, trigger_key, recipient_key, line_user_id, due_at, messages, context,
                                 status, skip_reason, created_at, finished_at)
         SELECT 'bench', 'entered:' || i, u, u, $1, '[]'::json, '{}'::json,
                CASE WHEN i % 10 = 0 THEN 'skipped' ELSE 'pending' END,
                CASE WHEN i % 10 = 0 THEN 'holdout' END, $1, CASE WHEN i % 10 = 0 THEN $1 END
         FROM (SELECT i, 'U' || lpad(to_hex(i), 32, '0') AS u FROM generate_series(1, $2) i) s",
        "INSERT INTO delivery_sends (delivery_id, request_id, campaign_id, line_user_id, requested_at)
         SELECT d.id, (d.id - 1) / 500 + 1, 'bench', d.line_user_id, $1 FROM deliveries d WHERE d.status = 'pending'",
        "INSERT INTO events (event_id, type, line_user_id, occurred_at, properties, received_at)
         SELECT 'g' || i, 'purchase', 'U' || lpad(to_hex(i), 32, '0'), $1 + interval '1 day',
                jsonb_build_object('amount', 1000 + i % 5000), $1 + interval '1 day'
         FROM generate_series(1, $2) i WHERE i % 5 = 0",
    ];
    // What the outbox's writers would have counted as they went.
    let recount = renkei_store::RECOUNT_CAMPAIGN_COUNTS;
    for statement in statements.into_iter().chain(recount).chain(["VACUUM ANALYZE"]) {
        let query = sqlx::query(statement);
        let query = if statement.contains("$2") {
            query.bind(at).bind(users)
        } else if statement.contains("$1") {
            query.bind(at)
        } else {
            query
        };
        query.execute(&pool).await?;
    }
    pool.close().await;
    Ok(())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let users: i64 = if smoke_run() { 2_000 } else { env_number("RENKEI_BENCH_STATS_USERS", 1_000_000) };
        let Some(server) = postgres_server() else {
            println!("PostgreSQL: skipped (set RENKEI_BENCH_POSTGRES_URL)");
            return;
        };
        let url = test_support::create_database(&server).await.expect("database");
        let store = renkei_store::connect(&url).await.expect("connect");
        store.migrate().await.expect("migrate");
        let at = Utc::now() - chrono::Duration::days(3);
        let started = Instant::now();
        fill(&url, users, at).await.expect("fill");
        println!("campaign stats benchmark: {users} recipients (a tenth held out, a fifth converting), filled in {:.1} s", started.elapsed().as_secs_f64());
        let segments = SegmentSet::parse_str("buyers.yaml", "id: buyers\nname: b\nrule:\n  linked: true\n").expect("segment");
        let campaigns = CampaignSet::from_sources(
            vec![(PathBuf::from("bench.yaml"), CAMPAIGN.to_string())],
            vec![("t".to_string(), PathBuf::from("t.json.hbs"), TEMPLATE.to_string())],
            &segments,
        )
        .expect("campaign");
        let campaign = campaigns.get("bench").expect("bench");
        let view = CampaignsStore::of(&store);
        let mut times = Vec::new();
        let mut last = serde_json::Value::Null;
        for _ in 0..3 {
            let started = Instant::now();
            last = campaign_stats(&view, campaign, Utc::now(), chrono_tz::Asia::Tokyo, Period::default()).await.expect("stats");
            times.push(started.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let expected_treated = users - users / 10;
        assert_eq!(last["exposed"].as_i64(), Some(expected_treated), "{last}");
        assert_eq!(last["holdout"]["users"].as_i64(), Some(users / 10), "{last}");
        // Users 5k are converting: i % 5 == 0; of them i % 10 == 0 are held out.
        assert_eq!(last["converted"].as_i64(), Some(users / 5 - users / 10), "{last}");
        println!(
            "PostgreSQL: stats of a campaign to {users} users in {:.2} s (median of 3; min {:.2} s, max {:.2} s), peak RSS {:.0} MB; lift {}",
            times[1], times[0], times[2], peak_rss_mb(), last["lift"]
        );
        test_support::drop_database(&server, &url).await.expect("drop the benchmark's database");
    });
}
