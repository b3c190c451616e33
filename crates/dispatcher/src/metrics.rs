//! Dispatch counters, rendered as Prometheus text on `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct DispatchMetrics {
    pub deliveries_enqueued: AtomicU64,
    pub deliveries_skipped: AtomicU64,
    pub deliveries_deferred: AtomicU64,
    pub requests_created: AtomicU64,
    pub requests_sent: AtomicU64,
    pub recipients_sent: AtomicU64,
    /// Answers 409 to a retry key: already accepted earlier, counted as sent.
    pub requests_already_accepted: AtomicU64,
    pub requests_retried: AtomicU64,
    pub requests_failed: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Requests of the channel's budget granted to this instance that went
    /// unused (more than `limits::LATE` late): rate the channel let pass.
    pub budget_unused: AtomicU64,
    pub rich_menu_links: AtomicU64,
    /// 1 while the monthly-quota guard holds sending.
    pub quota_paused: AtomicU64,
    /// Time planners spent, in microseconds, per phase: claiming deliveries,
    /// gathering policy facts and deciding, committing requests. Tells an
    /// operator whether the database or LINE sets the pace.
    pub planning_claim_micros: AtomicU64,
    pub planning_policy_micros: AtomicU64,
    pub planning_commit_micros: AtomicU64,
}

impl DispatchMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &AtomicU64, &str); 13] = [
            (
                "renkei_deliveries_enqueued_total",
                "counter",
                &self.deliveries_enqueued,
                "campaign deliveries put in the outbox",
            ),
            ("renkei_deliveries_skipped_total", "counter", &self.deliveries_skipped, "deliveries a policy skipped"),
            (
                "renkei_deliveries_deferred_total",
                "counter",
                &self.deliveries_deferred,
                "deliveries deferred (quiet hours, quota)",
            ),
            (
                "renkei_line_requests_created_total",
                "counter",
                &self.requests_created,
                "push/multicast requests created",
            ),
            ("renkei_line_requests_sent_total", "counter", &self.requests_sent, "requests LINE accepted"),
            ("renkei_line_recipients_sent_total", "counter", &self.recipients_sent, "recipients of accepted requests"),
            (
                "renkei_line_requests_already_accepted_total",
                "counter",
                &self.requests_already_accepted,
                "409 answers to a retry key (counted as sent)",
            ),
            (
                "renkei_line_requests_retried_total",
                "counter",
                &self.requests_retried,
                "retryable failures (429, 5xx, timeouts)",
            ),
            (
                "renkei_line_requests_failed_total",
                "counter",
                &self.requests_failed,
                "requests LINE refused permanently",
            ),
            ("renkei_line_rate_limited_total", "counter", &self.rate_limited, "429 rate-limit answers from LINE"),
            (
                "renkei_line_budget_unused_total",
                "counter",
                &self.budget_unused,
                "requests of the channel's budget granted here that went unused (over 100 ms late)",
            ),
            (
                "renkei_rich_menu_links_total",
                "counter",
                &self.rich_menu_links,
                "users whose rich menu was linked or unlinked",
            ),
            (
                "renkei_quota_paused",
                "gauge",
                &self.quota_paused,
                "1 while sending is paused by the monthly quota guard",
            ),
        ];
        for (name, kind, value, help) in rows {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", value.load(Ordering::Relaxed));
        }
        let name = "renkei_dispatch_planning_seconds_total";
        let _ = writeln!(out, "# HELP {name} time planners spent per phase\n# TYPE {name} counter");
        for (phase, value) in [
            ("claim", &self.planning_claim_micros),
            ("policy", &self.planning_policy_micros),
            ("commit", &self.planning_commit_micros),
        ] {
            let _ = writeln!(out, "{name}{{phase=\"{phase}\"}} {}", value.load(Ordering::Relaxed) as f64 / 1e6);
        }
    }
}
