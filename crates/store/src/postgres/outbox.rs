//! PostgreSQL's side of the outbox: claims hold queue rows with `FOR UPDATE
//! SKIP LOCKED` so that planners of several instances take disjoint rows;
//! batches go in as one `UNNEST` statement; sets are bound as arrays.

use crate::membership::PAST_EVERY_USER;
use crate::outbox::{
    AlikeFire, Claim, ClaimLock, ClaimOutcome, NewDelivery, OutboxStore, PendingDelivery, QueueKey, SendFactsRow,
    SharedMessages, UserSendFacts, add_campaign_counts, claim_moves, count_slot, counts_by_user, parse_json,
    send_facts_of, sends_of, users_by_member,
};
use crate::requests::{NewRequest, recipients_json, retry_key_conflict};
use crate::sql::stmt;
use crate::{PgStore, StoreError, StoreResult, parse_member, parse_user};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt};
use renkei_core::{LineUserId, MemberId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use uuid::Uuid;

/// 1677-09-21: earlier than any due time, and inside PostgreSQL's range.
const BEFORE_ANY_DUE: DateTime<Utc> = DateTime::from_timestamp_nanos(i64::MIN);

/// A `delivery_queue` page: its key (first delivery), campaign, due, and
/// its deliveries' ids, LINE users, members and payload rows.
type QueuePage = (i64, String, DateTime<Utc>, Vec<i64>, Vec<Option<String>>, Vec<Option<String>>, Vec<i64>);

/// What a claim took out of the queue: its pages, and where each delivery is in them.
struct ClaimedPages {
    pages: Vec<QueuePage>,
    place: HashMap<i64, (usize, usize)>,
}

/// A claimed delivery as its queue page has it.
struct QueuedDelivery<'a> {
    campaign: &'a str,
    due_at: DateTime<Utc>,
    user: Option<&'a str>,
    member: Option<&'a str>,
    payload_of: i64,
}

impl ClaimedPages {
    fn new(pages: Vec<QueuePage>) -> StoreResult<Self> {
        let mut place = HashMap::with_capacity(pages.iter().map(|page| page.3.len()).sum());
        for (p, (key, _, _, ids, users, members, payloads)) in pages.iter().enumerate() {
            if users.len() != ids.len() || members.len() != ids.len() || payloads.len() != ids.len() {
                return Err(StoreError::Corrupt(format!("queue page {key}: its arrays differ in length")));
            }
            place.extend(ids.iter().enumerate().map(|(k, id)| (*id, (p, k))));
        }
        Ok(Self { pages, place })
    }

    fn len(&self) -> usize {
        self.place.len()
    }

    /// Every claimed delivery, with its id.
    fn all(&self) -> impl Iterator<Item = (i64, QueuedDelivery<'_>)> {
        self.pages
            .iter()
            .enumerate()
            .flat_map(move |(p, page)| page.3.iter().enumerate().map(move |(k, id)| (*id, self.at(p, k))))
    }

    fn get(&self, id: i64) -> Option<QueuedDelivery<'_>> {
        self.place.get(&id).map(|(p, k)| self.at(*p, *k))
    }

    fn at(&self, p: usize, k: usize) -> QueuedDelivery<'_> {
        let (_, campaign, due_at, _, users, members, payloads) = &self.pages[p];
        QueuedDelivery {
            campaign,
            due_at: *due_at,
            user: users[k].as_deref(),
            member: members[k].as_deref(),
            payload_of: payloads[k],
        }
    }
}

/// PostgreSQL's hold on claimed deliveries: the open transaction holding their queue rows' locks.
struct PgClaim {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    /// The queue pages the claim took out, to put the deferred deliveries back.
    queued: ClaimedPages,
}

#[async_trait]
impl ClaimLock for PgClaim {
    async fn commit(self: Box<Self>) -> StoreResult<()> {
        Ok(self.tx.commit().await?)
    }

    async fn rollback(self: Box<Self>) -> StoreResult<()> {
        Ok(self.tx.rollback().await?)
    }

    async fn write(
        &mut self,
        held: &BTreeMap<i64, String>,
        outcome: &ClaimOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<i64>> {
        let tx: &mut sqlx::PgConnection = &mut self.tx;
        let ids = pg_insert_requests(&mut *tx, &outcome.requests, now).await?;
        let (mut deliveries, mut requests, mut campaigns, mut users) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (delivery, request, campaign, user) in sends_of(held, &outcome.requests, &ids) {
            deliveries.push(delivery);
            requests.push(request);
            campaigns.push(campaign);
            users.push(user);
        }
        if !deliveries.is_empty() {
            sqlx::query(
                "INSERT INTO delivery_sends (delivery_id, request_id, campaign_id, line_user_id, requested_at)
                 SELECT d, r, c, u, $5 FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[]) AS s (d, r, c, u)",
            )
            .bind(&deliveries)
            .bind(&requests)
            .bind(&campaigns)
            .bind(&users)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if !outcome.skips.is_empty() {
            let (ids, reasons): (Vec<i64>, Vec<&str>) = outcome.skips.iter().map(|(id, r)| (*id, r.as_str())).unzip();
            sqlx::query(
                "UPDATE deliveries d SET status = 'skipped', skip_reason = s.reason, finished_at = $3
                 FROM UNNEST($1::bigint[], $2::text[]) AS s (id, reason) WHERE d.id = s.id",
            )
            .bind(&ids)
            .bind(&reasons)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let slot = held.keys().next().map_or(0, |id| count_slot(*id));
        add_campaign_counts::<sqlx::Postgres>(&mut *tx, &claim_moves(held, outcome), slot).await?;
        if !outcome.resolved.is_empty() {
            let (ids, users): (Vec<i64>, Vec<&str>) = outcome.resolved.iter().map(|(id, u)| (*id, u.as_str())).unzip();
            sqlx::query(
                "UPDATE deliveries d SET line_user_id = s.u FROM UNNEST($1::bigint[], $2::text[]) AS s (id, u)
                 WHERE d.id = s.id",
            )
            .bind(&ids)
            .bind(&users)
            .execute(&mut *tx)
            .await?;
        }
        if !outcome.defers.is_empty() {
            // Back in the queue at their new time, a page each, with the LINE user found now (if any).
            let resolved: HashMap<i64, &str> = outcome.resolved.iter().map(|(id, u)| (*id, u.as_str())).collect();
            let n = outcome.defers.len();
            let (mut ids, mut until, mut campaigns) =
                (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
            let (mut users, mut members, mut payloads, mut reasons) =
                (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
            for (id, at, reason) in &outcome.defers {
                let Some(queued) = self.queued.get(*id) else {
                    return Err(StoreError::Conflict(format!("delivery {id} is not held by this claim")));
                };
                ids.push(*id);
                until.push(*at);
                campaigns.push(queued.campaign);
                users.push(resolved.get(id).copied().or(queued.user));
                members.push(queued.member);
                payloads.push(queued.payload_of);
                reasons.push(reason.as_str());
            }
            sqlx::query(
                "WITH s AS (SELECT * FROM UNNEST($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                                                 $6::bigint[], $7::text[]) AS s (id, until, c, u, m, p, w)),
                      q AS (INSERT INTO delivery_queue (delivery_id, campaign_id, due_at, delivery_ids, line_user_ids,
                                                        member_ids, payload_ofs, size, waits_for)
                            SELECT id, c, until, ARRAY[id], ARRAY[u], ARRAY[m], ARRAY[p], 1, w FROM s)
                 UPDATE deliveries d SET due_at = s.until FROM s WHERE d.id = s.id",
            )
            .bind(&ids)
            .bind(&until)
            .bind(&campaigns)
            .bind(&users)
            .bind(&members)
            .bind(&payloads)
            .bind(&reasons)
            .execute(&mut *tx)
            .await?;
        }
        Ok(ids)
    }
}

/// The last of `texts` when `same` says `value` is the value it was
/// written from, else `value` written out.
fn repeat_or_write(texts: &[Arc<str>], same: bool, value: &serde_json::Value) -> Arc<str> {
    match texts.last() {
        Some(text) if same => Arc::clone(text),
        _ => Arc::from(value.to_string()),
    }
}

/// Inserts requests in one statement; returns their ids in the given order.
async fn pg_insert_requests(
    tx: &mut sqlx::PgConnection,
    requests: &[NewRequest],
    now: DateTime<Utc>,
) -> StoreResult<Vec<i64>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let kinds: Vec<&str> = requests.iter().map(|r| r.kind.as_str()).collect();
    let keys: Vec<Uuid> = requests.iter().map(|r| r.retry_key).collect();
    let messages: Vec<String> = requests.iter().map(|r| r.messages.to_string()).collect();
    let recipients: Vec<String> = requests.iter().map(|r| recipients_json(&r.recipients).to_string()).collect();
    let rows: Vec<(i64, Uuid)> = sqlx::query_as(
        "INSERT INTO send_requests (kind, retry_key, messages, recipients, status, attempts, next_attempt_at, created_at,
                                    aggregation_unit)
         SELECT k, key, m::json, r::json, 'pending', 0, $5, $5, u
         FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $6::text[]) AS s (k, key, m, r, u)
         RETURNING id, retry_key",
    )
    .bind(&kinds)
    .bind(&keys)
    .bind(&messages)
    .bind(&recipients)
    .bind(now)
    .bind(requests.iter().map(|r| r.aggregation_unit.as_deref()).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await
    .map_err(retry_key_conflict)?;
    let by_key: HashMap<Uuid, i64> = rows.into_iter().map(|(id, key)| (key, id)).collect();
    keys.iter()
        .map(|key| by_key.get(key).copied().ok_or_else(|| StoreError::Corrupt(format!("request {key} was not stored"))))
        .collect()
}

/// What an enqueue statement does after its `new` deliveries (the rows it
/// added): the campaigns' `created` counters (migration 0025), and a queue
/// page per campaign and due time (migration 0029), each delivery with the
/// first of those whose messages and context it shares (`$payload_of`, a
/// window over `new`). Returns how many were added.
macro_rules! queue_new {
    ($payload_of:literal) => {
        concat!(
            "    , counted AS (
                 INSERT INTO campaign_counts (campaign_id, status, skip_reason, slot, n)
                 SELECT campaign_id, 'created', '', (txid_current() % 8)::smallint, COUNT(*) FROM new
                 GROUP BY campaign_id ORDER BY campaign_id
                 ON CONFLICT (campaign_id, status, skip_reason, slot) DO UPDATE SET n = campaign_counts.n + excluded.n)
                 , shared AS (SELECT id, campaign_id, due_at, line_user_id, member_id, ",
            $payload_of,
            " AS payload_of FROM new)
                 , queued AS (
                 INSERT INTO delivery_queue (delivery_id, campaign_id, due_at, delivery_ids, line_user_ids, member_ids,
                                             payload_ofs, size)
                 SELECT MIN(id), campaign_id, due_at, ARRAY_AGG(id ORDER BY id), ARRAY_AGG(line_user_id ORDER BY id),
                        ARRAY_AGG(member_id ORDER BY id), ARRAY_AGG(payload_of ORDER BY id), COUNT(*)
                 FROM shared GROUP BY campaign_id, due_at)
             SELECT COUNT(*) FROM new"
        )
    };
}

/// The enqueue of given deliveries, with `$skip` between its rows and what
/// it returns: nothing, or the clause that skips deliveries that exist (DO
/// NOTHING also skips repeats inside the statement; only new rows are queued).
macro_rules! enqueue_sql {
    ($skip:literal) => {
        concat!(
            "WITH new AS (
                 INSERT INTO deliveries (campaign_id, trigger_key, recipient_key, line_user_id, member_id, due_at,
                                         messages, context, status, created_at)
                 SELECT c, t, r, u, m, d, msg::json, ctx::json, 'pending', $9
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                             $7::text[], $8::text[]) AS s (c, t, r, u, m, d, msg, ctx) ",
            $skip,
            " RETURNING id, campaign_id, due_at, line_user_id, member_id, CAST(messages AS TEXT) AS m,
                           CAST(context AS TEXT) AS ctx)",
            queue_new!("MIN(id) OVER (PARTITION BY m, ctx)")
        )
    };
}

const ENQUEUE: &str = enqueue_sql!("");
const ENQUEUE_SKIPPING_EXISTING: &str =
    enqueue_sql!("ON CONFLICT (campaign_id, trigger_key, recipient_key) DO NOTHING");

/// The enqueue of an [`AlikeFire`] to a range of its audience, as
/// [`enqueue_sql`]: the recipients, their links and the messages stay in
/// PostgreSQL (`membership.rs`'s `segment_range_linked` reads the same range).
macro_rules! enqueue_range_sql {
    ($skip:literal) => {
        concat!(
            "WITH page AS (
                 SELECT m.line_user_id,
                        (SELECT l.member_id FROM links l WHERE l.line_user_id = m.line_user_id) AS member_id
                 FROM segment_memberships m WHERE m.segment_id = $1 AND m.line_user_id > $2 AND m.line_user_id <= $3)
             , new AS (
                 INSERT INTO deliveries (campaign_id, trigger_key, recipient_key, line_user_id, member_id, due_at,
                                         messages, context, status, created_at)
                 SELECT $4, $5, line_user_id, line_user_id, member_id, $6, $7::json, $8::json, 'pending', $9 FROM page ",
            $skip,
            " RETURNING id, campaign_id, due_at, line_user_id, member_id)",
            queue_new!("MIN(id) OVER ()")
        )
    };
}

const ENQUEUE_RANGE: &str = enqueue_range_sql!("");
const ENQUEUE_RANGE_SKIPPING_EXISTING: &str =
    enqueue_range_sql!("ON CONFLICT (campaign_id, trigger_key, recipient_key) DO NOTHING");

/// The columns of the deliveries one enqueue statement inserts.
struct EnqueueRows<'a> {
    campaigns: Vec<&'a str>,
    triggers: Vec<&'a str>,
    recipients: Vec<&'a str>,
    users: Vec<Option<&'a str>>,
    members: Vec<Option<&'a str>>,
    due: Vec<DateTime<Utc>>,
    messages: Vec<&'a str>,
    contexts: Vec<&'a str>,
}

impl EnqueueRows<'_> {
    /// Runs `sql` (an [`enqueue_sql`]) on these rows; returns how many were new.
    async fn insert(&self, pool: &sqlx::PgPool, sql: &'static str, now: DateTime<Utc>) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(sql)
            .bind(&self.campaigns)
            .bind(&self.triggers)
            .bind(&self.recipients)
            .bind(&self.users)
            .bind(&self.members)
            .bind(&self.due)
            .bind(&self.messages)
            .bind(&self.contexts)
            .bind(now)
            .fetch_one(pool)
            .await
    }
}

/// Runs an enqueue statement (`run` binds it) plain, and when it meets an
/// existing delivery runs it again skipping those; returns how many were new.
/// Most enqueues are all new (a fire, a transition's deliveries), and a plain
/// insert costs ~3.5 µs a row less than one that skips what exists (a
/// speculative insertion: an index probe and a WAL record more per row). A
/// statement is all or nothing, so the one that met an existing delivery
/// wrote nothing.
async fn plain_then_skipping<F, Fut>(run: F, plain: &'static str, skipping: &'static str) -> StoreResult<u64>
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = Result<i64, sqlx::Error>>,
{
    let inserted = match run(plain).await {
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => run(skipping).await?,
        other => other?,
    };
    Ok(u64::try_from(inserted).unwrap_or(0))
}

#[async_trait]
impl OutboxStore for PgStore {
    fn parallel_claims(&self) -> bool {
        true
    }

    async fn insert_deliveries(&self, deliveries: &[NewDelivery], now: DateTime<Utc>) -> StoreResult<u64> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let n = deliveries.len();
        let (mut campaigns, mut triggers, mut recipients) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut users, mut members, mut due) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut messages, mut contexts) = (Vec::with_capacity(n), Vec::with_capacity(n));
        // Deliveries rendered alike share their messages, and a fire's
        // contexts are alike: each run of the same is written out once.
        let (mut last_messages, mut last_context): (Option<&Arc<serde_json::Value>>, Option<&serde_json::Value>) =
            (None, None);
        for d in deliveries {
            campaigns.push(d.campaign_id.as_str());
            triggers.push(d.trigger_key.as_str());
            recipients.push(d.recipient_key.as_str());
            users.push(d.line_user_id.as_ref().map(|u| u.as_str()));
            members.push(d.member_id.as_ref().map(|m| m.as_str()));
            due.push(d.due_at);
            let same_messages = last_messages.is_some_and(|m| Arc::ptr_eq(m, &d.messages));
            messages.push(repeat_or_write(&messages, same_messages, &d.messages));
            let same_context = last_context == Some(&d.context);
            contexts.push(repeat_or_write(&contexts, same_context, &d.context));
            (last_messages, last_context) = (Some(&d.messages), Some(&d.context));
        }
        let rows = EnqueueRows {
            campaigns,
            triggers,
            recipients,
            users,
            members,
            due,
            messages: messages.iter().map(|m| &**m).collect(),
            contexts: contexts.iter().map(|c| &**c).collect(),
        };
        plain_then_skipping(|sql| rows.insert(&self.pool, sql, now), ENQUEUE, ENQUEUE_SKIPPING_EXISTING).await
    }

    async fn insert_audience_range(
        &self,
        fire: &AlikeFire<'_>,
        after: Option<&str>,
        through: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let (messages, context) = (fire.messages.to_string(), fire.context.to_string());
        let insert = |sql: &'static str| {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(fire.audience)
                .bind(after.unwrap_or(""))
                .bind(through.unwrap_or(PAST_EVERY_USER))
                .bind(fire.campaign_id)
                .bind(fire.trigger_key)
                .bind(fire.due_at)
                .bind(&messages)
                .bind(&context)
                .bind(now)
                .fetch_one(&self.pool)
        };
        plain_then_skipping(insert, ENQUEUE_RANGE, ENQUEUE_RANGE_SKIPPING_EXISTING).await
    }

    async fn claim_deliveries_after(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        after: Option<QueueKey>,
    ) -> StoreResult<Claim> {
        let mut tx = self.pool.begin().await?;
        // The queue swings between empty and millions of rows, so its
        // statistics are mostly stale: planned from them, a claim reads and
        // sorts the whole queue and the commit's writes scan whole tables for
        // a batch's rows. This transaction goes by key: due rows in index
        // order, and the pages it reads are hot, so priced as such. A planner
        // that stops answering (hung, or cut off without the connection
        // closing) loses its claim after a minute instead of holding it forever.
        sqlx::raw_sql(
            "SET LOCAL enable_sort = off; SET LOCAL random_page_cost = 1.1;
             SET LOCAL idle_in_transaction_session_timeout = '60s'",
        )
        .execute(&mut *tx)
        .await?;
        // SKIP LOCKED: concurrent claims (other planners, other instances)
        // take disjoint pages (migration 0029). The queue carries what the
        // policies need, so a claim reads the wide deliveries only for their
        // distinct payloads: one row for a campaign's 2,000 identical
        // messages. The held pages leave the queue in the claim itself; a
        // rollback or a crash puts them back, and the commit puts back the
        // deferred deliveries.
        let pages: Vec<QueuePage> = sqlx::query_as(
            "SELECT delivery_id, campaign_id, due_at, delivery_ids, line_user_ids, member_ids, payload_ofs
             FROM claim_queued($1, $2, $3, $4)",
        )
        .bind(now)
        .bind(i32::try_from(limit).unwrap_or(i32::MAX))
        // No `after`: from before any key, so the row comparison stays an index condition.
        .bind(after.map_or(BEFORE_ANY_DUE, |(due, _)| due))
        .bind(after.map_or(i64::MIN, |(_, id)| id))
        .fetch_all(&mut *tx)
        .await?;
        let (queue_rows, last_key) = (pages.len(), pages.last().map(|page| (page.2, page.0)));
        let queued = ClaimedPages::new(pages)?;
        if queued.len() == 0 {
            tx.rollback().await?;
            return Ok(Claim::empty());
        }
        let payload_ids: Vec<i64> =
            queued.all().map(|(_, d)| d.payload_of).collect::<BTreeSet<_>>().into_iter().collect();
        let payload_rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT id, CAST(messages AS TEXT), CAST(context AS TEXT) FROM deliveries WHERE id = ANY($1)",
        )
        .bind(&payload_ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut shared = SharedMessages::default();
        let mut payloads = HashMap::with_capacity(payload_rows.len());
        for (id, messages, context) in payload_rows {
            let context = Arc::new(parse_json(&context, "delivery context")?);
            payloads.insert(id, (shared.get(&messages)?, context));
        }
        let deliveries = queued
            .all()
            .map(|(id, d)| {
                let (messages, context) = payloads.get(&d.payload_of).cloned().ok_or_else(|| {
                    StoreError::Corrupt(format!("delivery {id}: payload {} is missing", d.payload_of))
                })?;
                Ok(PendingDelivery {
                    id,
                    campaign_id: d.campaign.to_string(),
                    line_user_id: d.user.map(parse_user).transpose()?,
                    member_id: d.member.map(parse_member).transpose()?,
                    due_at: d.due_at,
                    messages,
                    context,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Claim::new(deliveries, Box::new(PgClaim { tx, queued })).of_pages(queue_rows, last_key))
    }

    async fn sent_counts(
        &self,
        users: &[LineUserId],
        campaign_id: Option<&str>,
        since: DateTime<Utc>,
    ) -> StoreResult<HashMap<LineUserId, u64>> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
        // Per-user subqueries: index probes, where a join would make the
        // planner hash the whole table for a few thousand users.
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT u.id, (SELECT COUNT(*) FROM delivery_sends s JOIN send_requests r ON r.id = s.request_id
                           WHERE s.line_user_id = u.id AND s.requested_at >= $2 AND r.status <> 'failed'
                             AND ($3::text IS NULL OR s.campaign_id = $3))
             FROM UNNEST($1::text[]) AS u (id)",
        )
        .bind(&ids)
        .bind(since)
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await?;
        counts_by_user(rows)
    }

    async fn member_line_users(&self, members: &[MemberId]) -> StoreResult<HashMap<MemberId, LineUserId>> {
        if members.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<&str> = members.iter().map(|m| m.as_str()).collect();
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT m.id, (SELECT l.line_user_id FROM links l WHERE l.member_id = m.id) FROM UNNEST($1::text[]) AS m (id)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        users_by_member(rows)
    }

    async fn send_facts(
        &self,
        users: &[LineUserId],
        segments: &[String],
    ) -> StoreResult<HashMap<LineUserId, UserSendFacts>> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
        // Per-user subqueries: index probes, where joins would make the
        // planner hash the whole of links for a few thousand users.
        let rows: Vec<SendFactsRow> = sqlx::query_as(
            "SELECT u.id,
                    (SELECT l.member_id FROM links l WHERE l.line_user_id = u.id),
                    (SELECT f.following FROM friendships f WHERE f.line_user_id = u.id),
                    CASE WHEN cardinality($2::text[]) = 0 THEN '{}'::text[]
                         ELSE ARRAY(SELECT m.segment_id FROM segment_memberships m
                                    WHERE m.line_user_id = u.id AND m.segment_id = ANY($2)) END
             FROM UNNEST($1::text[]) AS u (id)",
        )
        .bind(&ids)
        .bind(segments)
        .fetch_all(&self.pool)
        .await?;
        Ok(send_facts_of(users, rows))
    }

    async fn tidy_queue(&self) -> StoreResult<()> {
        // SKIP_LOCKED: another instance's vacuum of it is as good.
        sqlx::raw_sql("VACUUM (SKIP_LOCKED) delivery_queue").execute(&self.pool).await?;
        Ok(())
    }

    async fn next_delivery_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        // NOT EXISTS: an anti-join the planner drives from the queue's index.
        stmt::<sqlx::Postgres>(
            "SELECT q.due_at FROM delivery_queue q
             WHERE NOT EXISTS (SELECT 1 FROM campaign_state c WHERE c.campaign_id = q.campaign_id AND c.paused)
             ORDER BY q.due_at LIMIT 1",
        )
        .optional(&self.pool, |row| row.ts("due_at"))
        .await
    }
}
