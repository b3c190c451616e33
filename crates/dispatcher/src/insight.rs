//! LINE's own numbers per campaign: every round, for each aggregation unit
//! sent within the last 14 days, LINE's statistics per unit (unique
//! impressions and clicks) are fetched and kept (`line_unit_stats`).
//!
//! LINE allows 60 such calls an hour: a round asks for at most
//! [`UNITS_PER_ROUND`] units, least lately fetched first, and rounds are an
//! hour apart by default (`dispatch.insight_refresh`), so the budget holds
//! whatever the number of units; a 429 ends the round. One instance polls at
//! a time (lease `line_insight`). The period asked is the unit's first send
//! (at most 30 days back, LINE's limit) to today, as dates in UTC+9.

use crate::DispatchResult;
use chrono::{DateTime, Duration, FixedOffset, NaiveDate, Utc};
use renkei_core::Clock;
use renkei_line::{LineClient, LineError};
use renkei_store::{LeaseStore, RequestStore, UnitStats};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Units asked for in one round (below LINE's 60 an hour).
pub const UNITS_PER_ROUND: usize = 50;
/// How long after its last send a unit is still asked for.
pub const WATCH_DAYS: i64 = 14;
const LEASE: &str = "line_insight";

pub struct InsightPoller {
    requests: Arc<dyn RequestStore>,
    leases: Arc<dyn LeaseStore>,
    line: LineClient,
    clock: Arc<dyn Clock>,
    /// This instance, as the lease's holder.
    holder: String,
}

/// A date as LINE's insight API counts them (UTC+9).
fn line_date(at: DateTime<Utc>) -> NaiveDate {
    let jst = FixedOffset::east_opt(9 * 3600).unwrap_or_else(|| FixedOffset::east_opt(0).expect("UTC"));
    at.with_timezone(&jst).date_naive()
}

impl InsightPoller {
    pub fn new(
        requests: Arc<dyn RequestStore>,
        leases: Arc<dyn LeaseStore>,
        line: LineClient,
        clock: Arc<dyn Clock>,
        holder: String,
    ) -> Self {
        Self { requests, leases, line, clock, holder }
    }

    /// One round: how many units' statistics were fetched (0 when another
    /// instance holds the lease).
    pub async fn poll_once(&self, every: std::time::Duration) -> DispatchResult<usize> {
        let now = self.clock.now();
        let hold = Duration::from_std(every).unwrap_or(Duration::hours(1)).max(Duration::minutes(1));
        if !self.leases.acquire_lease(LEASE, &self.holder, now, now + hold).await? {
            return Ok(0);
        }
        let units = self.requests.units_sent_since(now - Duration::days(WATCH_DAYS)).await?;
        let today = line_date(now);
        let mut fetched = 0;
        for unit in units.into_iter().take(UNITS_PER_ROUND) {
            let from = line_date(unit.first_sent_at).max(today - Duration::days(30));
            match self.line.statistics_per_unit(&unit.unit, from, today).await {
                Ok(stats) => {
                    let stats =
                        UnitStats { unique_impression: stats.unique_impression, unique_click: stats.unique_click };
                    self.requests.save_unit_stats(&unit.unit, stats, self.clock.now()).await?;
                    fetched += 1;
                }
                Err(error @ LineError::RateLimited { .. }) => {
                    tracing::warn!(%error, "LINE's statistics per unit: rate limited; the rest waits for the next round");
                    break;
                }
                Err(error) => tracing::warn!(unit = %unit.unit, %error, "LINE's statistics per unit failed"),
            }
        }
        Ok(fetched)
    }

    /// Rounds every `every` until `token` is cancelled.
    pub fn spawn(self: Arc<Self>, every: std::time::Duration, token: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while !token.is_cancelled() {
                match self.poll_once(every).await {
                    Ok(n) if n > 0 => tracing::info!(units = n, "LINE's statistics per unit fetched"),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "fetching LINE's statistics per unit failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(every.max(std::time::Duration::from_millis(100))) => {}
                    _ = token.cancelled() => {}
                }
            }
        })
    }
}
