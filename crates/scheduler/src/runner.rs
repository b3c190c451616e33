//! Campaign triggers: turns segment entries, events and cron fires into
//! deliveries in the outbox, and keeps each user's desired rich menu.
//!
//! Every trigger instance has a key (`entered:<transition id>`,
//! `event:<event row id>`, `schedule:<fire time>`, `fanout:<match values
//! key>:<window start>`), and a delivery is unique
//! per campaign, trigger key and recipient, so reprocessing after a crash,
//! or two instances doing the same work, never makes a second delivery.
//!
//! Transitions and events are tailed by row id. On PostgreSQL ids can
//! commit out of order, so rows are re-read for [`SETTLE`] after they were
//! first passed (already handled rows are skipped in memory); the stored
//! cursor only moves past ids that have settled.

use crate::SchedulerResult;
use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use renkei_campaigns::{
    Campaign, CampaignSet, FanoutTarget, RenderContext, RenderMemo, RichMenuRules, Trigger, schedule,
};
use renkei_core::{Clock, LineUserId, MemberId};
use renkei_dispatcher::DispatchMetrics;
use renkei_store::dispatch::{AlikeFire, FireState, NewDelivery};
use renkei_store::membership::{Cause, StoredTransition, TransitionKind, UserRecord};
use renkei_store::{FanoutQuery, StoreResult, StoredEvent};
use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long a passed row id may still be joined by a lower one committing late.
pub const SETTLE: Duration = Duration::from_secs(30);
const PAGE: u32 = 1_000;
const TRANSITIONS_CURSOR: &str = "campaigns.transitions";
const EVENTS_CURSOR: &str = "campaigns.events";

#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub timezone: Tz,
    /// For `track` links.
    pub public_base_url: String,
    /// How often to look for new transitions and events.
    pub poll: Duration,
    /// A missed cron fire still runs when it is at most this old (only the latest one).
    pub misfire_grace: chrono::Duration,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            timezone: chrono_tz::Asia::Tokyo,
            public_base_url: "http://127.0.0.1:8080".to_string(),
            poll: Duration::from_millis(25),
            misfire_grace: chrono::Duration::hours(1),
        }
    }
}

renkei_store::store_view! {
    /// What the runner reads and writes: the tables whose new rows trigger
    /// campaigns, the users they reach, the deliveries it enqueues, the rich
    /// menus it sets, and its own cursors and fires.
    pub struct RunnerStore {
        events: EventStore,
        members: MemberStore,
        memberships: MembershipStore,
        membership_reads: MembershipReads,
        outbox: OutboxStore,
        outbox_reads: OutboxReads,
        rich_menus: RichMenuStore,
        schedule: ScheduleStore,
        leases: LeaseStore,
    }
}

pub struct CampaignRunner {
    store: RunnerStore,
    campaigns: Arc<CampaignSet>,
    rich_menus: Arc<RichMenuRules>,
    clock: Arc<dyn Clock>,
    settings: RunnerSettings,
    metrics: Arc<DispatchMetrics>,
    /// Wakes the dispatcher when deliveries were enqueued.
    dispatch_wake: Arc<Notify>,
    enabled_at: HashMap<String, DateTime<Utc>>,
}

/// A table whose new rows trigger campaigns.
enum Table {
    Transitions,
    /// Events of these types.
    Events(Vec<String>),
}

impl Table {
    fn cursor(&self) -> &'static str {
        match self {
            Table::Transitions => TRANSITIONS_CURSOR,
            Table::Events(_) => EVENTS_CURSOR,
        }
    }
}

enum Row {
    Transition(StoredTransition),
    Event(StoredEvent),
}

impl Row {
    fn id(&self) -> i64 {
        match self {
            Row::Transition(t) => t.id,
            Row::Event(e) => e.id,
        }
    }
}

/// Tailing state of one table.
#[derive(Debug, Default)]
struct Tail {
    last_seen: i64,
    settled: i64,
    processed: HashSet<i64>,
    /// (when, last_seen then): `settled` follows it SETTLE later.
    marks: VecDeque<(Instant, i64)>,
    last_sweep: Option<Instant>,
}

impl Tail {
    fn start(cursor: i64) -> Self {
        Self { last_seen: cursor, settled: cursor, ..Self::default() }
    }

    /// Advances `settled`; returns true when it moved.
    fn settle(&mut self, now: Instant) -> bool {
        let mut moved = false;
        while let Some(&(at, id)) = self.marks.front() {
            if now.duration_since(at) < SETTLE {
                break;
            }
            self.marks.pop_front();
            if id > self.settled {
                self.settled = id;
                moved = true;
            }
        }
        let settled = self.settled;
        self.processed.retain(|id| *id > settled);
        moved
    }

    fn seen(&mut self, id: i64) -> bool {
        !self.processed.insert(id)
    }

    fn mark(&mut self, now: Instant) {
        if self.marks.back().is_none_or(|(_, id)| *id != self.last_seen) {
            self.marks.push_back((now, self.last_seen));
        }
    }

    fn sweep_due(&mut self, now: Instant) -> bool {
        let due = self.last_sweep.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(5));
        if due {
            self.last_sweep = Some(now);
        }
        due && self.last_seen > self.settled
    }
}

impl CampaignRunner {
    /// Records (or reads) when each campaign was first enabled: segment
    /// entries and cron fires before that do not trigger it.
    pub async fn new(
        store: RunnerStore,
        campaigns: Arc<CampaignSet>,
        rich_menus: Arc<RichMenuRules>,
        clock: Arc<dyn Clock>,
        settings: RunnerSettings,
        metrics: Arc<DispatchMetrics>,
        dispatch_wake: Arc<Notify>,
    ) -> SchedulerResult<Self> {
        let now = clock.now();
        let mut enabled_at = HashMap::new();
        for campaign in campaigns.iter() {
            enabled_at.insert(campaign.id.clone(), store.schedule.campaign_enabled_at(&campaign.id, now).await?);
        }
        Ok(Self { store, campaigns, rich_menus, clock, settings, metrics, dispatch_wake, enabled_at })
    }

    fn event_types(&self) -> Vec<String> {
        let mut types: Vec<String> =
            self.campaigns.iter().filter_map(|c| c.trigger.event_type().map(str::to_string)).collect();
        types.sort();
        types.dedup();
        types
    }

    fn watches_transitions(&self) -> bool {
        self.campaigns.iter().any(|c| matches!(c.trigger, Trigger::SegmentEntered { .. }))
            || has_rich_menus(&self.rich_menus)
    }

    async fn start_tail(&self, cursor: &str, max: i64) -> SchedulerResult<Tail> {
        let start = match self.store.schedule.get_cursor(cursor).await? {
            Some(value) => value,
            None => {
                // First start: react to what happens from now on, not to history.
                self.store.schedule.set_cursor(cursor, max).await?;
                max
            }
        };
        Ok(Tail::start(start))
    }

    /// Runs the trigger loops until cancelled.
    pub fn spawn(self: Arc<Self>, token: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        if self.watches_transitions() {
            tasks.push(tokio::spawn(self.clone().tail_loop(Table::Transitions, token.clone())));
        }
        let types = self.event_types();
        if !types.is_empty() {
            tasks.push(tokio::spawn(self.clone().tail_loop(Table::Events(types), token.clone())));
        }
        if self.campaigns.iter().any(|c| matches!(c.trigger, Trigger::Schedule { .. })) {
            tasks.push(tokio::spawn(self.schedule_loop(token)));
        }
        tasks
    }

    /// Tails one table by row id until cancelled: opens its cursor (at the
    /// newest row on a first start), then handles new rows every `poll`.
    async fn tail_loop(self: Arc<Self>, table: Table, token: CancellationToken) {
        let mut tail = loop {
            let opened = match self.max_id(&table).await {
                Ok(max) => self.start_tail(table.cursor(), max).await,
                Err(error) => Err(error.into()),
            };
            match opened {
                Ok(tail) => break tail,
                Err(error) => {
                    tracing::warn!(%error, table = table.cursor(), "opening a trigger cursor failed; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = token.cancelled() => return,
            }
        };
        while !token.is_cancelled() {
            match self.tail_round(&table, &mut tail).await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, table = table.cursor(), "processing triggers failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.poll) => {}
                _ = token.cancelled() => {}
            }
        }
    }

    async fn max_id(&self, table: &Table) -> StoreResult<i64> {
        match table {
            Table::Transitions => self.store.schedule.max_transition_id().await,
            Table::Events(_) => self.store.events.max_event_id().await,
        }
    }

    async fn fetch(&self, table: &Table, after: i64, limit: u32) -> StoreResult<Vec<Row>> {
        Ok(match table {
            Table::Transitions => self
                .store
                .membership_reads
                .transitions_after(after, limit)
                .await?
                .into_iter()
                .map(Row::Transition)
                .collect(),
            Table::Events(types) => {
                self.store.events.events_after(after, types, limit).await?.into_iter().map(Row::Event).collect()
            }
        })
    }

    /// One round: rows after the last seen, plus (every few seconds) rows that
    /// committed late below it; returns how many new rows were read.
    async fn tail_round(&self, table: &Table, tail: &mut Tail) -> SchedulerResult<usize> {
        let rows = self.fetch(table, tail.last_seen, PAGE).await?;
        let n = rows.len();
        let mut fresh: Vec<Row> = rows.into_iter().filter(|r| !tail.seen(r.id())).collect();
        if let Some(last) = fresh.iter().map(Row::id).max() {
            tail.last_seen = tail.last_seen.max(last);
        }
        let now = Instant::now();
        if tail.sweep_due(now) {
            let late = self.fetch(table, tail.settled, 10 * PAGE).await?;
            let last_seen = tail.last_seen;
            fresh.extend(late.into_iter().filter(|r| r.id() <= last_seen && !tail.seen(r.id())));
        }
        if !fresh.is_empty() {
            let (mut transitions, mut events) = (Vec::new(), Vec::new());
            for row in fresh {
                match row {
                    Row::Transition(t) => transitions.push(t),
                    Row::Event(e) => events.push(e),
                }
            }
            if !transitions.is_empty() {
                self.on_transitions(&transitions).await?;
            }
            if !events.is_empty() {
                self.on_events(&events).await?;
            }
        }
        tail.mark(now);
        if tail.settle(now) {
            self.store.schedule.set_cursor(table.cursor(), tail.settled).await?;
        }
        Ok(n)
    }

    /// Enqueues segment-entry campaigns and updates desired rich menus.
    pub async fn on_transitions(&self, transitions: &[StoredTransition]) -> SchedulerResult<()> {
        let now = self.clock.now();
        let mut deliveries = Vec::new();
        // A full recompute (start-up, a new or edited segment) establishes
        // membership; campaigns react to entries caused by data or time.
        let entered: Vec<&StoredTransition> = transitions
            .iter()
            .filter(|t| t.transition.kind == TransitionKind::Entered && t.transition.cause != Cause::Recompute)
            .collect();
        let users: Vec<LineUserId> = unique(entered.iter().map(|t| t.transition.line_user_id.clone()));
        let records = self.records(&users).await?;
        let mut memo = RenderMemo::default();
        for t in &entered {
            let segment = &t.transition.segment_id;
            for campaign in self.campaigns.entering(segment) {
                if self.enabled_at.get(&campaign.id).is_some_and(|enabled| t.transition.at < *enabled) {
                    continue;
                }
                let user = &t.transition.line_user_id;
                let record = records.get(user);
                let context = json!({"segment": segment, "entered_at": rfc3339(t.transition.at)});
                let instance = Instance {
                    trigger_key: format!("entered:{}", t.id),
                    line_user_id: Some(user.clone()),
                    member_id: record.and_then(|r| r.member_id.clone()),
                    attributes: record.and_then(|r| r.attributes.as_ref()),
                    event: None,
                    due_at: now,
                    context,
                };
                deliveries.extend(self.deliveries(campaign, instance, now, &mut memo));
            }
        }
        self.enqueue(&deliveries, now).await?;
        if has_rich_menus(&self.rich_menus) {
            let watched: BTreeSet<&str> = self.rich_menus.rules.iter().map(|r| r.segment.as_str()).collect();
            let touched = unique(
                transitions
                    .iter()
                    .filter(|t| watched.contains(t.transition.segment_id.as_str()))
                    .map(|t| t.transition.line_user_id.clone()),
            );
            self.update_rich_menus(&touched).await?;
        }
        Ok(())
    }

    /// Sets the desired rich menu of these users from their memberships.
    pub async fn update_rich_menus(&self, users: &[LineUserId]) -> SchedulerResult<()> {
        if users.is_empty() {
            return Ok(());
        }
        let mut desired = Vec::with_capacity(users.len());
        for user in users {
            let memberships = self.store.membership_reads.user_memberships(user).await?;
            desired.push((user.clone(), self.rich_menus.per_user_menu(&memberships).map(str::to_string)));
        }
        self.store.rich_menus.set_desired_rich_menus(&desired, self.clock.now()).await?;
        self.dispatch_wake.notify_waiters();
        Ok(())
    }

    /// At start: the desired menu of every member of a rule segment. Others
    /// have no menu of their own and see the channel's default (set by the
    /// dispatcher's rich-menu linker); leaving a rule segment unlinks.
    /// One instance at a time (lease [`RICH_MENU_SYNC_LEASE`]): `None` when
    /// another instance is syncing now, or took the sync over.
    pub async fn sync_rich_menus(&self) -> SchedulerResult<Option<u64>> {
        let holder = format!("scheduler-{}", uuid::Uuid::new_v4().simple());
        if !self.hold_lease(RICH_MENU_SYNC_LEASE, &holder).await? {
            return Ok(None);
        }
        let synced = self.sync_rich_menus_holding(&holder).await;
        if let Ok(Some(_)) = synced {
            self.store.schedule.set_cursor(RICH_MENU_SYNC_DONE, self.clock.now().timestamp_micros()).await?;
        }
        if let Err(error) = self.store.leases.release_lease(RICH_MENU_SYNC_LEASE, &holder).await {
            tracing::warn!(%error, "releasing the rich-menu sync lease failed; it expires by itself");
        }
        synced
    }

    /// The start-up sync: here, unless another instance completes one after
    /// this start; if that instance dies mid-way, this one takes over once its
    /// lease expires. Returns the users synced here.
    pub async fn sync_rich_menus_at_start(&self, stop: &CancellationToken) -> SchedulerResult<Option<u64>> {
        let started = self.clock.now().timestamp_micros();
        loop {
            if let Some(synced) = self.sync_rich_menus().await? {
                return Ok(Some(synced));
            }
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                () = stop.cancelled() => return Ok(None),
            }
            if self.store.schedule.get_cursor(RICH_MENU_SYNC_DONE).await?.is_some_and(|done| done > started) {
                return Ok(None);
            }
        }
    }

    /// Takes or renews `name` for `holder` for [`LEASE_TERM`].
    async fn hold_lease(&self, name: &str, holder: &str) -> SchedulerResult<bool> {
        let now = self.clock.now();
        Ok(self.store.leases.acquire_lease(name, holder, now, now + LEASE_TERM).await?)
    }

    /// `None` when the lease was lost on the way (another instance syncs again).
    async fn sync_rich_menus_holding(&self, holder: &str) -> SchedulerResult<Option<u64>> {
        let mut total = 0;
        let segments: BTreeSet<String> = self.rich_menus.rules.iter().map(|r| r.segment.clone()).collect();
        for segment in segments {
            let mut after: Option<String> = None;
            loop {
                let page = self.store.membership_reads.segment_members(&segment, after.as_deref(), PAGE).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.as_str().to_string());
                total += page.len() as u64;
                self.update_rich_menus(&page).await?;
                if !self.hold_lease(RICH_MENU_SYNC_LEASE, holder).await? {
                    return Ok(None);
                }
            }
        }
        Ok(Some(total))
    }

    /// Enqueues event-triggered campaigns for these events. A send time
    /// already past by more than the catch-up grace (a reminder for a
    /// reservation posted too late) is recorded as `expired`, not sent.
    pub async fn on_events(&self, events: &[StoredEvent]) -> SchedulerResult<()> {
        let now = self.clock.now();
        let tz = self.settings.timezone;
        let relevant: Vec<&StoredEvent> =
            events.iter().filter(|e| self.campaigns.on_event(&e.event_type).next().is_some()).collect();
        // Resolve every member and user of the page once.
        let mut links: HashMap<MemberId, Option<LineUserId>> = HashMap::new();
        for event in &relevant {
            if event.line_user_id.is_none()
                && let Some(member) = event.member_id.as_deref().and_then(|m| MemberId::parse(m).ok())
                && !links.contains_key(&member)
            {
                let user = self.store.membership_reads.member_line_user(&member).await?;
                links.insert(member, user);
            }
        }
        let users = unique(relevant.iter().filter_map(|e| {
            e.line_user_id.as_deref().and_then(|u| LineUserId::parse(u).ok()).or_else(|| {
                e.member_id
                    .as_deref()
                    .and_then(|m| MemberId::parse(m).ok())
                    .and_then(|m| links.get(&m).cloned().flatten())
            })
        }));
        let records = self.records(&users).await?;
        let mut unlinked_members: HashMap<MemberId, Option<Map<String, Value>>> = HashMap::new();
        let mut deliveries = Vec::new();
        let mut memo = RenderMemo::default();
        for event in relevant {
            let member_id = event.member_id.as_deref().and_then(|m| MemberId::parse(m).ok());
            let line_user = event
                .line_user_id
                .as_deref()
                .and_then(|u| LineUserId::parse(u).ok())
                .or_else(|| member_id.as_ref().and_then(|m| links.get(m).cloned().flatten()));
            let (member_id, attributes) = match (&line_user, &member_id) {
                (Some(user), _) => {
                    let record = records.get(user);
                    let member = record.and_then(|r| r.member_id.clone()).or(member_id.clone());
                    (member, record.and_then(|r| r.attributes.clone()))
                }
                (None, Some(member)) => {
                    if !unlinked_members.contains_key(member) {
                        let stored = self.store.members.get_member(member).await?.map(|m| m.attributes);
                        unlinked_members.insert(member.clone(), stored);
                    }
                    (Some(member.clone()), unlinked_members.get(member).cloned().flatten())
                }
                (None, None) => (None, None),
            };
            let event_json = json!({
                "type": event.event_type,
                "occurred_at": rfc3339(event.occurred_at),
                "properties": Value::Object(event.properties.clone()),
            });
            for campaign in self.campaigns.on_event(&event.event_type) {
                let Trigger::Event { timing, .. } = &campaign.trigger else { continue };
                if !campaign.trigger.takes_event(&event.properties, now, tz) {
                    continue;
                }
                let mut context = json!({"event": event_json.clone()});
                let due = match timing.send_at(event.occurred_at, &event.properties, tz) {
                    Ok(due) if due < now - self.settings.misfire_grace => {
                        context["expired"] = Value::String(rfc3339(due));
                        now
                    }
                    Ok(due) => due,
                    Err(error) => {
                        context["error"] = Value::String(format!("event {}: {error}", event.id));
                        now
                    }
                };
                let instance = Instance {
                    trigger_key: format!("event:{}", event.id),
                    line_user_id: line_user.clone(),
                    member_id: member_id.clone(),
                    attributes: attributes.as_ref(),
                    event: Some(&event_json),
                    due_at: due,
                    context,
                };
                deliveries.extend(self.deliveries(campaign, instance, now, &mut memo));
            }
        }
        self.enqueue(&deliveries, now).await?;
        for event in events {
            for campaign in self.campaigns.fanning_out(&event.event_type) {
                if campaign.trigger.takes_event(&event.properties, now, tz) {
                    self.fan_out(campaign, event).await?;
                }
            }
        }
        Ok(())
    }

    /// Enqueues a fan-out campaign for one trigger event: one delivery per
    /// user its target reaches ([`FanoutTarget`]), reading a page of matching
    /// events at a time. The trigger key names the match values and the
    /// window the event falls in (`fanout:<values key>:<window start µs>`,
    /// the window kept by [`ScheduleStore::open_window`]), so the outbox's
    /// uniqueness sends each user once per window, across repeats of the
    /// event, restarts and instances; users who have a delivery of that key
    /// are looked up per page and left out, so a repeat renders only who is
    /// new. Returns how many deliveries were new.
    ///
    /// Deliveries are enqueued [`FANOUT_BATCH`] distinct users at a time
    /// (each batch one transaction), so that the dispatcher's claims of
    /// identical payloads fill whole multicasts of 500. Users already enqueued
    /// by this call are remembered as 64-bit hashes (8 bytes a user).
    ///
    /// [`ScheduleStore::open_window`]: renkei_store::ScheduleStore::open_window
    pub async fn fan_out(&self, campaign: &Campaign, event: &StoredEvent) -> SchedulerResult<u64> {
        let Trigger::Fanout { to, .. } = &campaign.trigger else { return Ok(0) };
        let values = match to.match_values(&event.properties) {
            Ok(values) => values,
            Err(property) => {
                tracing::warn!(campaign = %campaign.id, event = event.id, %property,
                    "a fan-out's trigger event lacks the match property as a string; it reaches nobody");
                return Ok(0);
            }
        };
        let key = FanoutTarget::values_key(&values);
        let window = format!("fanout:{}:{key}", campaign.id);
        let start = self.store.schedule.open_window(&window, event.occurred_at, to.within).await?;
        let trigger_key = format!("fanout:{key}:{}", start.timestamp_micros());
        let query = FanoutQuery {
            event_types: to.event_types.clone(),
            matches: values,
            since: event.occurred_at - to.within,
            until: event.occurred_at,
        };
        let event_json = json!({
            "type": event.event_type,
            "occurred_at": rfc3339(event.occurred_at),
            "properties": Value::Object(event.properties.clone()),
        });
        let mut context = json!({"event": event_json.clone(), "window_start": rfc3339(start)});
        if event.occurred_at < self.clock.now() - self.settings.misfire_grace {
            context["expired"] = Value::String(rfc3339(event.occurred_at));
        }
        let instance = FanoutInstance { campaign, trigger_key, event: &event_json, due_at: event.occurred_at, context };
        let (mut after, mut new) = (None, 0);
        let (mut seen, mut pending) = (HashSet::new(), Vec::new());
        loop {
            let page = self.store.events.fanout_page(&query, after, PAGE).await?;
            let last_page = page.len() < PAGE as usize;
            after = page.last().map(|hit| hit.place());
            let fresh: Vec<(String, Option<LineUserId>, Option<MemberId>)> = page
                .iter()
                .filter_map(|hit| {
                    let user = hit.line_user_id.as_deref().and_then(|u| LineUserId::parse(u).ok());
                    let member = hit.member_id.as_deref().and_then(|m| MemberId::parse(m).ok());
                    let key = recipient_key(user.as_ref(), member.as_ref())?;
                    seen.insert(hash_of(&key)).then_some((key, user, member))
                })
                .collect();
            // A repeat inside the window renders only who is new.
            let keys: Vec<String> = fresh.iter().map(|(key, _, _)| key.clone()).collect();
            let delivered =
                self.store.outbox_reads.delivered_recipients(&campaign.id, &instance.trigger_key, &keys).await?;
            pending.extend(
                fresh
                    .into_iter()
                    .filter(|(key, _, _)| !delivered.contains(key))
                    .map(|(_, user, member)| (user, member)),
            );
            while pending.len() >= FANOUT_BATCH || (last_page && !pending.is_empty()) {
                let batch: Vec<_> = pending.drain(..pending.len().min(FANOUT_BATCH)).collect();
                new += self.enqueue_fanout(&instance, batch).await?;
            }
            if last_page {
                break;
            }
        }
        tracing::info!(campaign = %campaign.id, event = event.id, trigger_key = %instance.trigger_key, new, "fan-out enqueued");
        Ok(new)
    }

    /// Renders and enqueues one batch of a fan-out's recipients (LINE user,
    /// else an unlinked member, whose delivery the dispatcher skips as
    /// unlinked); returns how many were new.
    async fn enqueue_fanout(
        &self,
        fanout: &FanoutInstance<'_>,
        recipients: Vec<(Option<LineUserId>, Option<MemberId>)>,
    ) -> SchedulerResult<u64> {
        let users: Vec<LineUserId> = recipients.iter().filter_map(|(user, _)| user.clone()).collect();
        let records = self.records(&users).await?;
        let now = self.clock.now();
        let mut deliveries = Vec::with_capacity(recipients.len());
        let mut memo = RenderMemo::default();
        for (line_user_id, member_id) in recipients {
            let record = line_user_id.as_ref().and_then(|u| records.get(u));
            let instance = Instance {
                trigger_key: fanout.trigger_key.clone(),
                member_id: record.and_then(|r| r.member_id.clone()).or(member_id),
                line_user_id,
                attributes: record.and_then(|r| r.attributes.as_ref()),
                event: Some(fanout.event),
                due_at: fanout.due_at,
                context: fanout.context.clone(),
            };
            deliveries.extend(self.deliveries(fanout.campaign, instance, now, &mut memo));
        }
        self.enqueue(&deliveries, now).await
    }

    async fn schedule_loop(self: Arc<Self>, token: CancellationToken) {
        // A crash while enqueueing left a fire `started`: finish it (deliveries dedupe).
        match self.store.schedule.unfinished_fires().await {
            Ok(fires) => {
                for fire in fires {
                    if let Some(campaign) = self.campaigns.get(&fire.campaign_id) {
                        tracing::info!(campaign = %campaign.id, fire_at = %fire.fire_at, "finishing an interrupted cron fire");
                        if let Err(error) = self.fire(campaign, fire.fire_at).await {
                            tracing::warn!(%error, campaign = %campaign.id, "finishing a cron fire failed");
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "reading unfinished cron fires failed"),
        }
        while !token.is_cancelled() {
            let now = self.clock.now();
            let mut next: Option<DateTime<Utc>> = None;
            for campaign in self.campaigns.iter() {
                match self.schedule_round(campaign, now).await {
                    Ok(Some(at)) => next = Some(next.map_or(at, |n| n.min(at))),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%error, campaign = %campaign.id, "cron round failed; retrying"),
                }
            }
            let wait = next
                .and_then(|at| (at - self.clock.now()).to_std().ok())
                .unwrap_or(Duration::from_secs(1))
                .clamp(Duration::from_millis(10), Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = token.cancelled() => {}
            }
        }
    }

    /// Runs what is due of one scheduled campaign; returns its next fire time.
    pub async fn schedule_round(
        &self,
        campaign: &Campaign,
        now: DateTime<Utc>,
    ) -> SchedulerResult<Option<DateTime<Utc>>> {
        let Trigger::Schedule { schedule: cron, .. } = &campaign.trigger else { return Ok(None) };
        let tz = self.settings.timezone;
        let enabled = self.enabled_at.get(&campaign.id).copied().unwrap_or(now);
        let since = match self.store.schedule.last_fire(&campaign.id).await? {
            Some(fire) => fire.fire_at.max(enabled),
            None => enabled,
        };
        let plan = schedule::catch_up(cron, tz, since, now, self.settings.misfire_grace);
        for missed in &plan.missed {
            if self.store.schedule.record_fire(&campaign.id, *missed, FireState::Missed).await? {
                tracing::warn!(campaign = %campaign.id, fire_at = %missed, "cron fire missed while renkei was down; not sent (older than the catch-up grace or superseded by a later fire)");
            }
        }
        if let Some(fire_at) = plan.run
            && self.store.schedule.record_fire(&campaign.id, fire_at, FireState::Started).await?
        {
            tracing::info!(campaign = %campaign.id, %fire_at, "cron fire");
            self.fire(campaign, fire_at).await?;
        }
        Ok(schedule::next_fire(cron, tz, now))
    }

    /// Enqueues one fire of a scheduled campaign for its audience's current
    /// members; returns how many deliveries were new (none when a fire taken
    /// over after a crash finds them all enqueued).
    pub async fn fire(&self, campaign: &Campaign, fire_at: DateTime<Utc>) -> SchedulerResult<u64> {
        let Trigger::Schedule { audience, .. } = &campaign.trigger else { return Ok(0) };
        let fire = ScheduleFire {
            campaign,
            audience,
            trigger_key: format!("schedule:{}", rfc3339(fire_at)),
            context: json!({"fire_at": rfc3339(fire_at)}),
            fire_at,
            alike: self.campaigns.renders_alike(campaign),
        };
        // The audience is cut into ranges of a page each (a cheap read of
        // where each ends), which writers read, render and enqueue: two at a
        // time where the store takes parallel writes, so the database and
        // the renderer work at the same time (a lone writer would leave them
        // idle through each commit).
        let writers = if self.store.outbox.parallel_claims() { 2 } else { 1 };
        let (ranges, taken): (Vec<_>, Vec<_>) =
            (0..writers).map(|_| tokio::sync::mpsc::channel::<AudienceRange>(1)).unzip();
        let cut = async move {
            let mut after: Option<String> = None;
            for number in 0.. {
                let end = self.store.membership_reads.segment_page_end(audience, after.as_deref(), PAGE).await?;
                let through = end.map(|user| user.as_str().to_string());
                let range = AudienceRange { after: after.clone(), through: through.clone() };
                if ranges[number % ranges.len()].send(range).await.is_err() {
                    break; // a writer failed: its error is the fire's
                }
                match through {
                    Some(through) => after = Some(through),
                    None => break,
                }
            }
            SchedulerResult::Ok(())
        };
        let fire = &fire;
        let writers = taken.into_iter().map(|mut taken| async move {
            let mut total = 0;
            while let Some(range) = taken.recv().await {
                total += self.enqueue_range(fire, &range).await?;
            }
            SchedulerResult::Ok(total)
        });
        let (cutting, written) = tokio::join!(cut, futures::future::try_join_all(writers));
        let total: u64 = written?.into_iter().sum();
        cutting?;
        self.store.schedule.set_fire_state(&campaign.id, fire_at, FireState::Done).await?;
        Ok(total)
    }

    /// Enqueues `fire` to one range of its audience; returns how many deliveries were new.
    async fn enqueue_range(&self, fire: &ScheduleFire<'_>, range: &AudienceRange) -> SchedulerResult<u64> {
        let now = self.clock.now();
        let (after, through) = (range.after.as_deref(), range.through.as_deref());
        let mut memo = RenderMemo::default();
        let instance = |line_user_id: Option<LineUserId>, member_id: Option<MemberId>, attributes| Instance {
            trigger_key: fire.trigger_key.clone(),
            line_user_id,
            member_id,
            attributes,
            event: None,
            due_at: fire.fire_at,
            context: fire.context.clone(),
        };
        if fire.alike {
            // One render for everyone, and the recipients stay in the store.
            let rendered = self.delivery(fire.campaign, instance(None, None, None), now, None, &mut memo);
            let alike = AlikeFire {
                campaign_id: &fire.campaign.id,
                trigger_key: &fire.trigger_key,
                audience: fire.audience,
                due_at: fire.fire_at,
                messages: &rendered.messages,
                context: &rendered.context,
            };
            let new = self.store.outbox.insert_audience_range(&alike, after, through, now).await?;
            self.count_enqueued(new);
            return Ok(new);
        }
        let recipients = self.store.membership_reads.segment_range_linked(fire.audience, after, through).await?;
        // Member data is loaded only when the messages read it.
        let mut records = if self.campaigns.reads_member(&fire.campaign.id) {
            let users: Vec<LineUserId> = recipients.iter().map(|(user, _)| user.clone()).collect();
            self.records(&users).await?
        } else {
            HashMap::new()
        };
        let deliveries: Vec<NewDelivery> = recipients
            .into_iter()
            .map(|(user, member_id)| {
                let record = records.remove(&user);
                let (member_id, attributes) = record.map_or((member_id, None), |r| (r.member_id, r.attributes));
                let one = instance(Some(user), member_id, None);
                self.delivery(fire.campaign, Instance { attributes: attributes.as_ref(), ..one }, now, None, &mut memo)
            })
            .collect();
        self.enqueue(&deliveries, now).await
    }

    async fn records(&self, users: &[LineUserId]) -> SchedulerResult<HashMap<LineUserId, UserRecord>> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(self
            .store
            .memberships
            .load_users(users, Some(&[]))
            .await?
            .into_iter()
            .map(|r| (r.line_user_id.clone(), r))
            .collect())
    }

    /// Inserts deliveries (those already in the outbox are ignored); returns how many were new.
    async fn enqueue(&self, deliveries: &[NewDelivery], now: DateTime<Utc>) -> SchedulerResult<u64> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let new = self.store.outbox.insert_deliveries(deliveries, now).await?;
        self.count_enqueued(new);
        Ok(new)
    }

    /// Counts `new` enqueued deliveries, and wakes the dispatcher for them.
    fn count_enqueued(&self, new: u64) {
        DispatchMetrics::add(&self.metrics.deliveries_enqueued, new);
        if new > 0 {
            self.dispatch_wake.notify_waiters();
        }
    }

    /// The deliveries of one trigger instance for one recipient: one, or
    /// one per step of a sequence (trigger key `…/<step id>`, due at
    /// [`Campaign::step_times`] from `due_at`, context naming the step and
    /// when the sequence started). All are enqueued at once, so each step
    /// goes exactly once; what may stop a later step is judged at its send
    /// time (`exit`, `if`, a step removed from the file).
    fn deliveries(
        &self,
        campaign: &Campaign,
        instance: Instance<'_>,
        now: DateTime<Utc>,
        memo: &mut RenderMemo,
    ) -> Vec<NewDelivery> {
        if campaign.steps.is_empty() {
            return vec![self.delivery(campaign, instance, now, None, memo)];
        }
        let times = campaign.step_times(instance.due_at, self.settings.timezone);
        campaign
            .steps
            .iter()
            .zip(times)
            .enumerate()
            .map(|(k, (step, due))| {
                let mut context = instance.context.clone();
                context["step"] = Value::String(step.id.clone());
                context["started_at"] = Value::String(rfc3339(instance.due_at));
                let trigger_key = format!("{}/{}", instance.trigger_key, step.id);
                let one = Instance { trigger_key, due_at: due, context, ..instance.clone() };
                self.delivery(campaign, one, now, Some(k), memo)
            })
            .collect()
    }

    /// Renders the campaign (or one of its steps) for one recipient; a render
    /// failure becomes a delivery the dispatcher skips as `invalid_trigger`,
    /// with the reason kept.
    fn delivery(
        &self,
        campaign: &Campaign,
        instance: Instance<'_>,
        now: DateTime<Utc>,
        step: Option<usize>,
        memo: &mut RenderMemo,
    ) -> NewDelivery {
        let Instance { trigger_key, line_user_id, member_id, attributes, event, due_at, mut context } = instance;
        let ctx = RenderContext {
            member_id: member_id.as_ref().map(|m| m.as_str()),
            member: attributes,
            line_user_id: line_user_id.as_ref().map(|u| u.as_str()),
            trigger_key: Some(trigger_key.as_str()),
            event,
            now,
            timezone: self.settings.timezone,
            public_base_url: &self.settings.public_base_url,
        };
        let messages = match self.campaigns.render_step_shared(campaign, step, &ctx, memo) {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(campaign = %campaign.id, %error, "rendering failed; the delivery will be skipped");
                context["error"] = Value::String(error.to_string());
                Arc::new(Value::Array(Vec::new()))
            }
        };
        let user = line_user_id.as_ref().map(|u| u.as_str());
        if let (Some(variant), Some(_)) = (campaign.message_range(step, user).0, user) {
            context["variant"] = Value::String(variant.id.clone());
        }
        let recipient_key =
            recipient_key(line_user_id.as_ref(), member_id.as_ref()).unwrap_or_else(|| "unknown".to_string());
        NewDelivery {
            campaign_id: campaign.id.clone(),
            trigger_key,
            recipient_key,
            line_user_id,
            member_id,
            due_at,
            messages,
            context,
        }
    }

    pub fn campaigns(&self) -> &Arc<CampaignSet> {
        &self.campaigns
    }
}

/// One fan-out trigger instance, for every recipient.
struct FanoutInstance<'a> {
    campaign: &'a Campaign,
    /// `fanout:<values key>:<window start µs>`.
    trigger_key: String,
    event: &'a Value,
    due_at: DateTime<Utc>,
    context: Value,
}

/// A fan-out's recipients per enqueue: a multiple of LINE's 500 per multicast.
const FANOUT_BATCH: usize = 1_000;

/// A 64-bit hash of a recipient key, to remember whom a fan-out enqueued
/// (a collision, about 3 in 10⁸ at a million users, would miss one user).
fn hash_of(key: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(key)
}

/// One fire of a scheduled campaign.
struct ScheduleFire<'a> {
    campaign: &'a Campaign,
    audience: &'a str,
    /// `schedule:<fire time>`.
    trigger_key: String,
    context: Value,
    fire_at: DateTime<Utc>,
    /// Its messages are the same for every recipient (`CampaignSet::renders_alike`).
    alike: bool,
}

/// A range of an audience by LINE user id: `(after, through]`, to the end without `through`.
struct AudienceRange {
    after: Option<String>,
    through: Option<String>,
}

/// One trigger instance for one recipient, before it is rendered.
#[derive(Clone)]
struct Instance<'a> {
    /// `entered:<transition id>`, `event:<event id>` or `schedule:<fire time>`.
    trigger_key: String,
    line_user_id: Option<LineUserId>,
    member_id: Option<MemberId>,
    attributes: Option<&'a Map<String, Value>>,
    /// The trigger event, for templates and `unless`.
    event: Option<&'a Value>,
    due_at: DateTime<Utc>,
    context: Value,
}

/// The lease of the start-up rich-menu sync (see [`CampaignRunner::sync_rich_menus`]).
pub const RICH_MENU_SYNC_LEASE: &str = "rich_menu_sync";
/// The cursor holding when the last complete rich-menu sync ended (µs).
const RICH_MENU_SYNC_DONE: &str = "rich_menu_sync_done";
/// How long a lease lasts unless renewed: a crashed holder's work is taken
/// over after at most this long.
const LEASE_TERM: chrono::Duration = chrono::Duration::seconds(30);

fn has_rich_menus(rules: &RichMenuRules) -> bool {
    !rules.rules.is_empty() || rules.default.is_some()
}

/// A delivery's recipient key: the LINE user, else `member:<id>`.
fn recipient_key(user: Option<&LineUserId>, member: Option<&MemberId>) -> Option<String> {
    match (user, member) {
        (Some(user), _) => Some(user.as_str().to_string()),
        (None, Some(member)) => Some(format!("member:{}", member.as_str())),
        (None, None) => None,
    }
}

fn unique(users: impl Iterator<Item = LineUserId>) -> Vec<LineUserId> {
    let mut seen = HashSet::new();
    users.filter(|u| seen.insert(u.clone())).collect()
}

pub(crate) fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_settles_only_after_the_window_and_forgets_settled_ids() {
        let mut tail = Tail::start(10);
        let t0 = Instant::now();
        assert!(!tail.seen(11));
        assert!(tail.seen(11), "a row is processed once");
        tail.last_seen = 11;
        tail.mark(t0);
        assert!(!tail.settle(t0 + Duration::from_secs(1)));
        assert_eq!(tail.settled, 10);
        assert!(tail.settle(t0 + SETTLE));
        assert_eq!(tail.settled, 11);
        assert!(tail.processed.is_empty());
    }
}
