//! Evaluating users and writing their memberships: the one path shared by
//! real-time, time-driven and full-recompute evaluation.

use crate::{MembershipError, MembershipResult};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures::StreamExt;
use renkei_core::{Clock, LineUserId, UserRef};
use renkei_segments::{EventFact, EventTotals, SegmentChanges, SegmentSet, TalliedCondition, UserFacts};
use renkei_store::membership::{
    AudiencePage, Cause, EventSelection, FactEventRecord, MembershipUpdate, SegmentStats, Transition, UserEventRecord,
    UserRecord,
};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

renkei_store::store_view! {
    /// What the engine reads and writes: memberships and what they are
    /// computed from, the lease of its timer (one instance at a time), and
    /// the change feed its evaluator follows.
    pub struct EngineStore { memberships: MembershipStore, reads: MembershipReads, leases: LeaseStore, changes: ChangeFeed }
}

/// Users per page in recompute, preview and `run_due`.
const DEFAULT_PAGE_SIZE: u32 = 5_000;

/// Recompute pages loaded and evaluated at once.
const PAGES_IN_FLIGHT: usize = 3;

/// What loading and evaluating a recompute page needs, owned so that each
/// page can run as its own task.
#[derive(Clone)]
struct PageContext {
    store: EngineStore,
    segments: Arc<SegmentSet>,
    clock: Arc<dyn Clock>,
    tz: Tz,
    selection: Arc<Selection>,
}

impl PageContext {
    /// One recompute page: its users' facts loaded and evaluated at the
    /// clock's `now` (evaluation is CPU work, kept off the async workers).
    async fn load_and_evaluate(self, page: MembershipResult<AudiencePage>) -> MembershipResult<EvaluatedPage> {
        let page = page?;
        let now = self.clock.now();
        if self.segments.is_empty() {
            // No segment to answer (a recompute of removed segments only):
            // every user is in none, and there is nothing to load.
            let updates = page
                .users
                .iter()
                .map(|u| MembershipUpdate { line_user_id: u.clone(), segments: BTreeSet::new(), next_due: None })
                .collect();
            return Ok(EvaluatedPage { page, updates, events: 0, now });
        }
        let records = self.store.memberships.load_page_facts(&page, &self.selection.at(now)).await?;
        let (segments, tz) = (self.segments, self.tz);
        let (updates, events) = tokio::task::spawn_blocking(move || evaluate_page(&segments, records, now, tz))
            .await
            .map_err(|e| MembershipError::Task(e.to_string()))?;
        Ok(EvaluatedPage { page, updates, events, now })
    }
}

struct EvaluatedPage {
    page: AudiencePage,
    updates: Vec<MembershipUpdate>,
    events: u64,
    now: DateTime<Utc>,
}

/// Where a running recompute is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecomputeProgress {
    pub users: u64,
    pub events: u64,
    pub transitions: u64,
}

/// What a finished recompute did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecomputeReport {
    pub users: u64,
    pub events: u64,
    pub transitions: u64,
    pub elapsed: Duration,
}

/// What evaluation reads of events, from the segment set: the types, their
/// properties, and how far back each type matters, read raw (the full
/// recompute, previews) or beside the running totals (real time).
struct Selection {
    base: EventSelection,
    horizons: Horizons,
    /// Horizons when the totals of `loaded` are read too.
    beside_totals: Horizons,
    /// The tallies read beside the events, by key: the plain counts (kept by
    /// the store itself), and the others once the store keeps them.
    loaded: BTreeMap<String, TalliedCondition>,
}

type Horizons = BTreeMap<String, chrono::Duration>;

fn horizons(of: BTreeMap<String, Option<renkei_core::SpanDuration>>) -> Horizons {
    of.into_iter().filter_map(|(t, horizon)| horizon.map(|d| (t, d.to_chrono()))).collect()
}

impl Selection {
    /// `keyed`: whether the store keeps the tallies beyond plain counts.
    fn of(segments: &SegmentSet, keyed: bool) -> Self {
        let loaded: BTreeMap<String, TalliedCondition> =
            segments.tallied_conditions().into_iter().filter(|(_, c)| keyed || c.is_plain()).collect();
        let types: BTreeSet<String> = loaded.values().map(|c| c.event_type.clone()).collect();
        let keys = segments.property_reads();
        let base = EventSelection {
            types: keys.keys().cloned().collect(),
            keys,
            since: BTreeMap::new(),
            totals: types.into_iter().collect(),
            tallies: loaded.values().filter(|c| !c.is_plain()).map(|c| c.key.clone()).collect(),
        };
        let horizons_raw = horizons(segments.event_horizons());
        let beside_totals = horizons(segments.event_horizons_beside(&|key| loaded.contains_key(key)));
        Self { base, horizons: horizons_raw, beside_totals, loaded }
    }

    /// Every event that can matter for an evaluation at `now` (or later):
    /// those at or before `now - horizon` can no longer change any answer.
    fn at(&self, now: DateTime<Utc>) -> EventSelection {
        EventSelection {
            since: since(&self.horizons, now),
            totals: Vec::new(),
            tallies: Vec::new(),
            ..self.base.clone()
        }
    }

    /// The running totals of the loaded tallies, and the events only the
    /// windows need: a user's history costs nothing beyond its windows.
    fn with_totals_at(&self, now: DateTime<Utc>) -> EventSelection {
        EventSelection { since: since(&self.beside_totals, now), ..self.base.clone() }
    }
}

fn since(horizons: &Horizons, now: DateTime<Utc>) -> BTreeMap<String, DateTime<Utc>> {
    horizons.iter().filter_map(|(t, d)| now.checked_sub_signed(*d).map(|at| (t.clone(), at))).collect()
}

pub struct MembershipEngine {
    pub(crate) store: EngineStore,
    pub(crate) segments: Arc<SegmentSet>,
    pub(crate) clock: Arc<dyn Clock>,
    tz: Tz,
    /// Only the events that can still matter are loaded, with only the
    /// properties segments read.
    selection: Arc<Selection>,
    page_size: u32,
    /// Wakes the timer task when a schedule may have moved earlier.
    pub(crate) schedule_changed: Notify,
    /// When the timer task will next wake (µs since the epoch), so that only
    /// an earlier due time needs to wake it.
    pub(crate) timer_target: AtomicI64,
    /// This engine as the holder of the timer's lease.
    pub(crate) instance: String,
    /// Batches of changed users the worker gave up on after its retries;
    /// the change feed gives their rows back rather than finishing them.
    pub(crate) given_up: AtomicU64,
}

/// A stored event as the segment language sees it: a full record (`load_users`)
/// or one thinned for evaluation (`load_user_facts`).
pub trait IntoEventFact {
    fn into_event_fact(self) -> EventFact;
}

impl IntoEventFact for UserEventRecord {
    fn into_event_fact(self) -> EventFact {
        EventFact { event_type: self.event_type, occurred_at: self.occurred_at, properties: self.properties.into() }
    }
}

impl IntoEventFact for FactEventRecord {
    fn into_event_fact(self) -> EventFact {
        EventFact { event_type: self.event_type, occurred_at: self.occurred_at, properties: self.properties.into() }
    }
}

/// A stored user as the segment language sees it. Its running totals, when
/// loaded, are summed over their sources per key.
pub fn facts_of<E: IntoEventFact>(record: UserRecord<E>) -> UserFacts {
    let mut totals: BTreeMap<String, EventTotals> = BTreeMap::new();
    for record in record.totals {
        let sum = EventTotals {
            count: record.count,
            numbers: record.numbers,
            sum: record.sum,
            min: record.min,
            max: record.max,
            last: Some(record.last_at),
            pending: Vec::new(),
        };
        totals.entry(record.key).or_default().merge(sum);
    }
    UserFacts {
        line_user_id: record.line_user_id,
        linked: record.member_id.is_some(),
        following: record.following,
        attributes: record.attributes,
        events: record.events.into_iter().map(IntoEventFact::into_event_fact).collect(),
        totals,
    }
}

/// [`facts_of`] for records loaded with the totals of the `loaded` tallies:
/// a tally with no events has totals too (of none), and the events stored
/// ahead of their time are added to the tallies they count in as pending.
fn facts_with_totals(
    mut record: UserRecord<FactEventRecord>,
    loaded: &BTreeMap<String, TalliedCondition>,
) -> UserFacts {
    let pending: Vec<EventFact> =
        std::mem::take(&mut record.pending).into_iter().map(|e| e.into_event_fact()).collect();
    let mut facts = facts_of(record);
    for (key, tallied) in loaded {
        let totals = facts.totals.entry(key.clone()).or_default();
        for event in pending.iter().filter(|e| e.event_type == tallied.event_type) {
            tallied.add_to(totals, event.occurred_at, &event.properties, true);
        }
    }
    facts
}

/// The user's complete answer at `now` and when it may next change by time alone.
fn evaluate_record(
    segments: &SegmentSet,
    record: UserRecord<FactEventRecord>,
    now: DateTime<Utc>,
    tz: Tz,
) -> MembershipUpdate {
    evaluate_facts(segments, facts_of(record), now, tz)
}

fn evaluate_facts(segments: &SegmentSet, facts: UserFacts, now: DateTime<Utc>, tz: Tz) -> MembershipUpdate {
    let answers = segments.evaluate_in_order(&facts, now, tz);
    let next_due = segments.next_change(&facts, now, tz).filter(|due| *due > now);
    MembershipUpdate {
        line_user_id: facts.line_user_id,
        segments: segments
            .in_dependency_order()
            .zip(answers)
            .filter(|(_, inside)| *inside)
            .map(|(segment, _)| segment.id.clone())
            .collect(),
        next_due,
    }
}

fn evaluate_page(
    segments: &SegmentSet,
    records: Vec<UserRecord<FactEventRecord>>,
    now: DateTime<Utc>,
    tz: Tz,
) -> (Vec<MembershipUpdate>, u64) {
    let events = records.iter().map(|r| r.events.len() as u64).sum();
    let updates = records.into_iter().map(|r| evaluate_record(segments, r, now, tz)).collect();
    (updates, events)
}

impl MembershipEngine {
    pub fn new(store: EngineStore, segments: Arc<SegmentSet>, clock: Arc<dyn Clock>, tz: Tz) -> Self {
        let selection = Arc::new(Selection::of(&segments, false));
        Self {
            store,
            segments,
            clock,
            tz,
            selection,
            page_size: DEFAULT_PAGE_SIZE,
            schedule_changed: Notify::new(),
            timer_target: AtomicI64::new(i64::MAX),
            instance: format!("evaluator-{}", uuid::Uuid::new_v4().simple()),
            given_up: AtomicU64::new(0),
        }
    }

    /// Has the store keep the segments' tallies from now on (building those
    /// it lacks from the stored events), and reads them from then on: until
    /// then, only plain counts are read from totals (the store keeps those
    /// by itself), the other conditions from the events.
    pub async fn with_tallies(mut self) -> MembershipResult<Self> {
        let started = Instant::now();
        let tallier = self.segments.tallier();
        let keys = renkei_core::EventTallier::tallies(&tallier).len();
        self.store.memberships.maintain_tallies(Arc::new(tallier), self.clock.now()).await?;
        tracing::info!(keys, seconds = started.elapsed().as_secs_f64(), "running tallies of events kept");
        self.selection = Arc::new(Selection::of(&self.segments, true));
        Ok(self)
    }

    /// Users per page for recompute, preview and due processing (at least 1).
    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size.max(1);
        self
    }

    pub fn segments(&self) -> &SegmentSet {
        &self.segments
    }

    /// This engine's name as a lease holder (`evaluator-<random>`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn store(&self) -> &EngineStore {
        &self.store
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Re-evaluates one user now; returns the transitions it caused.
    pub async fn evaluate_user(&self, line_user_id: &LineUserId, cause: Cause) -> MembershipResult<Vec<Transition>> {
        self.evaluate_users(std::slice::from_ref(line_user_id), cause).await
    }

    /// Re-evaluates users at `clock.now()`: loads their facts, diffs with the
    /// stored memberships, records transitions and their next due times.
    pub async fn evaluate_users(&self, users: &[LineUserId], cause: Cause) -> MembershipResult<Vec<Transition>> {
        let mut seen = HashSet::new();
        let users: Vec<LineUserId> = users.iter().filter(|u| seen.insert(*u)).cloned().collect();
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.clock.now();
        let facts = self.load_with_totals(&users, now).await?;
        let updates: Vec<MembershipUpdate> =
            facts.into_iter().map(|f| evaluate_facts(&self.segments, f, now, self.tz)).collect();
        let transitions = self.store.memberships.apply_memberships(&updates, now, cause).await?;
        let earliest = updates.iter().filter_map(|u| u.next_due).min();
        if earliest.is_some_and(|due| due.timestamp_micros() < self.timer_target.load(Ordering::SeqCst)) {
            self.schedule_changed.notify_one();
        }
        for user in &users {
            tracing::debug!(line_user_id = %user, cause = cause.as_str(), "user evaluated");
        }
        for t in &transitions {
            tracing::debug!(
                segment = %t.segment_id, line_user_id = %t.line_user_id, kind = t.kind.as_str(),
                cause = cause.as_str(), "segment transition"
            );
        }
        Ok(transitions)
    }

    /// The users' facts for an evaluation at `now`, with running totals
    /// where they can answer; a user whose totals hold an event after `now`
    /// (a clock set back) is read raw instead.
    async fn load_with_totals(&self, users: &[LineUserId], now: DateTime<Utc>) -> MembershipResult<Vec<UserFacts>> {
        let selection = self.selection.with_totals_at(now);
        let records = self.store.memberships.load_user_facts(users, &selection).await?;
        let mut facts: Vec<UserFacts> =
            records.into_iter().map(|r| facts_with_totals(r, &self.selection.loaded)).collect();
        let stale: Vec<usize> = (0..facts.len()).filter(|&i| !facts[i].totals_usable_at(now)).collect();
        if !stale.is_empty() {
            let users: Vec<LineUserId> = stale.iter().map(|&i| facts[i].line_user_id.clone()).collect();
            let raw = self.store.memberships.load_user_facts(&users, &self.selection.at(now)).await?;
            for (i, record) in stale.into_iter().zip(raw) {
                facts[i] = facts_of(record);
            }
        }
        Ok(facts)
    }

    /// Rebuilds the store's running totals of events from the events (see
    /// `MembershipStore::rebuild_event_totals`); the start-up recompute runs it first.
    pub async fn rebuild_totals(&self) -> MembershipResult<()> {
        let started = Instant::now();
        self.store.memberships.rebuild_event_totals(self.clock.now()).await?;
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "running totals of events rebuilt");
        Ok(())
    }

    /// The LINE user a change refers to; `None` for a member not linked yet
    /// (its events count once linked, and the link reports the user).
    pub async fn resolve(&self, user: &UserRef) -> MembershipResult<Option<LineUserId>> {
        match user {
            UserRef::LineUser(id) => Ok(Some(id.clone())),
            UserRef::Member(member_id) => Ok(self.store.reads.member_line_user(member_id).await?),
        }
    }

    /// The real-time path: resolves the changed users and re-evaluates them.
    pub async fn process_changes(&self, users: &[UserRef], cause: Cause) -> MembershipResult<Vec<Transition>> {
        let mut resolved = Vec::with_capacity(users.len());
        let mut members = Vec::new();
        for user in users {
            match user {
                UserRef::LineUser(id) => resolved.push(id.clone()),
                UserRef::Member(id) => members.push(id.clone()),
            }
        }
        // One read for the lot: an import names a million members.
        let linked = self.store.reads.line_users_of_members(&members).await?;
        if linked.len() < members.len() {
            tracing::debug!(
                unlinked = members.len() - linked.len(),
                "changes of unlinked members: nobody to re-evaluate"
            );
        }
        resolved.extend(members.iter().filter_map(|m| linked.get(m).cloned()));
        resolved.sort();
        resolved.dedup();
        self.evaluate_users(&resolved, cause).await
    }

    /// The time-driven path, one round: re-evaluates every user due at
    /// `clock.now()`. Returns how many users were evaluated.
    pub async fn run_due(&self) -> MembershipResult<u64> {
        let mut evaluated = 0u64;
        let now = self.clock.now();
        loop {
            let due = self.store.reads.due_users(now, self.page_size).await?;
            if due.is_empty() {
                return Ok(evaluated);
            }
            evaluated += due.len() as u64;
            // Every evaluation moves the user's due time past `now`, so this terminates.
            self.evaluate_users(&due, Cause::Time).await?;
        }
    }

    /// Re-evaluates the whole audience universe, page by page (facts of a few
    /// pages in memory at a time), recording transitions with cause
    /// `recompute`. Paging, loading, evaluating and writing run as a
    /// pipeline, with `PAGES_IN_FLIGHT` pages loading and evaluating at once
    /// so that the database and the evaluator keep both cores busy.
    pub async fn recompute_all(
        &self,
        progress: impl FnMut(&RecomputeProgress) + Send,
    ) -> MembershipResult<RecomputeReport> {
        let context = PageContext {
            store: self.store.clone(),
            segments: self.segments.clone(),
            clock: self.clock.clone(),
            tz: self.tz,
            selection: self.selection.clone(),
        };
        self.recompute(context, None, progress).await
    }

    /// [`MembershipEngine::recompute_all`] for some segments only: those
    /// `changes` says to recompute, and the removed ones (whose memberships
    /// end, with cause `recompute`, as a full recompute ends them). Only
    /// those segments and the segments they reference are evaluated, and
    /// only the events they read are loaded: the audience is still walked
    /// page by page, but a page costs what its segments need. Memberships of
    /// the other segments are left as they are, and a user's due time only
    /// moves earlier (the one stored covers the other segments).
    pub async fn recompute_segments(
        &self,
        changes: &SegmentChanges,
        progress: impl FnMut(&RecomputeProgress) + Send,
    ) -> MembershipResult<RecomputeReport> {
        let segments = Arc::new(self.segments.with_dependencies(changes.recompute.iter().map(String::as_str)));
        // Raw reads only (`Selection::at`), as in a full recompute: no tallies needed.
        let selection = Arc::new(Selection::of(&segments, false));
        let context =
            PageContext { store: self.store.clone(), segments, clock: self.clock.clone(), tz: self.tz, selection };
        let scope: BTreeSet<String> = changes.recompute.iter().chain(&changes.removed).cloned().collect();
        self.recompute(context, Some(Arc::new(scope)), progress).await
    }

    /// The recompute pipeline: `context` says what is evaluated, `scope`
    /// which segments' memberships are written (`None`: all).
    async fn recompute(
        &self,
        context: PageContext,
        scope: Option<Arc<BTreeSet<String>>>,
        mut progress: impl FnMut(&RecomputeProgress) + Send,
    ) -> MembershipResult<RecomputeReport> {
        let started = Instant::now();
        match &scope {
            None => tracing::info!(segments = self.segments.len(), "full recompute started"),
            Some(scope) => tracing::info!(
                segments = ?scope,
                evaluated = context.segments.len(),
                "recompute of some segments started"
            ),
        }
        // Paging is an index-only walk, far cheaper than loading: it runs ahead.
        let (ids_tx, ids_rx) = mpsc::channel::<MembershipResult<AudiencePage>>(PAGES_IN_FLIGHT * 2);
        let pager = {
            let store = self.store.clone();
            let page_size = self.page_size;
            tokio::spawn(async move {
                let mut after: Option<LineUserId> = None;
                loop {
                    match store.memberships.audience_page(after.as_ref(), page_size).await {
                        Ok(page) => {
                            let Some(last) = page.last().cloned() else { return };
                            if ids_tx.send(Ok(page)).await.is_err() {
                                return;
                            }
                            after = Some(last);
                        }
                        Err(error) => {
                            let _ = ids_tx.send(Err(error.into())).await;
                            return;
                        }
                    }
                }
            })
        };
        let (write_tx, mut write_rx) = mpsc::channel::<EvaluatedPage>(2);
        let writer = {
            let store = self.store.clone();
            tokio::spawn(async move {
                let mut transitions = 0u64;
                while let Some(page) = write_rx.recv().await {
                    let applied = store.memberships.apply_page_memberships(
                        &page.page,
                        &page.updates,
                        page.now,
                        Cause::Recompute,
                        scope.as_deref(),
                    );
                    transitions += applied.await?.len() as u64;
                }
                Ok::<u64, MembershipError>(transitions)
            })
        };
        // Each page is its own task: decoding rows is CPU work too, and
        // tasks spread over the runtime's threads.
        let mut pages = Box::pin(
            futures::stream::unfold(ids_rx, |mut rx| async move { rx.recv().await.map(|page| (page, rx)) })
                .map(|page| {
                    let context = context.clone();
                    async move {
                        tokio::spawn(context.load_and_evaluate(page))
                            .await
                            .map_err(|e| MembershipError::Task(e.to_string()))?
                    }
                })
                .buffered(PAGES_IN_FLIGHT),
        );
        let mut done = RecomputeProgress { users: 0, events: 0, transitions: 0 };
        let mut failure = None;
        while let Some(page) = pages.next().await {
            let evaluated = match page {
                Ok(evaluated) => evaluated,
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            };
            let (users, events) = (evaluated.updates.len() as u64, evaluated.events);
            if write_tx.send(evaluated).await.is_err() {
                break; // the writer failed; its error is returned below
            }
            done.users += users;
            done.events += events;
            progress(&done);
            tracing::info!(users = done.users, events = done.events, "recompute progress");
        }
        drop(pages);
        drop(write_tx);
        pager.abort();
        let written = writer.await.map_err(|e| MembershipError::Task(e.to_string()))?;
        if let Some(error) = failure {
            return Err(error);
        }
        done.transitions = written?;
        self.schedule_changed.notify_one();
        let report = RecomputeReport {
            users: done.users,
            events: done.events,
            transitions: done.transitions,
            elapsed: started.elapsed(),
        };
        tracing::info!(
            users = report.users,
            events = report.events,
            transitions = report.transitions,
            seconds = report.elapsed.as_secs_f64(),
            "recompute finished"
        );
        Ok(report)
    }

    /// Members of one segment at `at`, computed on the fly from the stored
    /// facts (nothing is written), sorted.
    pub async fn preview(&self, segment_id: &str, at: DateTime<Utc>) -> MembershipResult<Vec<LineUserId>> {
        if self.segments.segment(segment_id).is_none() {
            return Err(MembershipError::UnknownSegment(segment_id.to_string()));
        }
        let mut members = Vec::new();
        let mut after: Option<LineUserId> = None;
        loop {
            let page = self.store.memberships.audience_page(after.as_ref(), self.page_size).await?;
            let Some(last) = page.last().cloned() else { break };
            for record in self.store.memberships.load_page_facts(&page, &self.selection.at(at)).await? {
                let facts = facts_of(record);
                if self.segments.evaluate_segment(segment_id, &facts, at, self.tz) == Some(true) {
                    members.push(facts.line_user_id);
                }
            }
            after = Some(last);
        }
        members.sort();
        Ok(members)
    }

    /// Stored memberships of a user (segment ids).
    pub async fn memberships(&self, line_user_id: &LineUserId) -> MembershipResult<BTreeSet<String>> {
        Ok(self.store.reads.user_memberships(line_user_id).await?)
    }

    /// Every configured segment's size and last change, in id order.
    pub async fn segment_stats(&self) -> MembershipResult<Vec<SegmentStats>> {
        let stored = self.store.reads.segment_stats().await?;
        Ok(self
            .segments
            .ids()
            .map(|id| {
                stored.iter().find(|s| s.segment_id == id).cloned().unwrap_or(SegmentStats {
                    segment_id: id.to_string(),
                    size: 0,
                    updated_at: None,
                })
            })
            .collect())
    }
}
