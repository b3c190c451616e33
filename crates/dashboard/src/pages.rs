//! The pages, rendered with maud (every `(value)` it prints is HTML-escaped).
//! Each number is printed in the language's format with its raw value in a
//! `data-value` attribute beside it.

use crate::DashboardState;
use crate::i18n::{Lang, Msg};
use crate::trend::Trend;
use crate::web::Signed;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use renkei_campaigns::{Campaign, Trigger};
use renkei_core::LineUserId;
use renkei_store::{
    AuditEntry, FailedRequest, Link, Member, Operator, OperatorRole, OverviewCounts, ReplyCount, SegmentStats,
    StoredEvent, UserDelivery, WaitingDeliveries,
};
use serde_json::Value;

/// `text` safe as one path segment (percent-encoded but for unreserved characters).
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn page(lang: Lang, title: &str, signed: Option<&Signed>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " – " (lang.t(Msg::Product)) }
                link rel="stylesheet" href="/dashboard/assets/dashboard.css";
            }
            body {
                header {
                    span.product { (lang.t(Msg::Product)) }
                    @if let Some(signed) = signed {
                        nav {
                            a href="/dashboard/" { (lang.t(Msg::Overview)) }
                            a href="/dashboard/segments" { (lang.t(Msg::Segments)) }
                            a href="/dashboard/campaigns" { (lang.t(Msg::Campaigns)) }
                            a href="/dashboard/links" { (lang.t(Msg::Links)) }
                            a href="/dashboard/deliveries" { (lang.t(Msg::Deliveries)) }
                            a href="/dashboard/members" { (lang.t(Msg::Members)) }
                            @if signed.role.allows(OperatorRole::Admin) {
                                a href="/dashboard/operators" { (lang.t(Msg::Operators)) }
                            }
                        }
                        form.signout method="post" action="/dashboard/logout" {
                            span #signed-in { (lang.t(Msg::SignedInAs)) " " strong { (signed.name) } " (" (lang.role(signed.role)) ")" }
                            (csrf(&signed.csrf))
                            button type="submit" { (lang.t(Msg::SignOut)) }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn csrf(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

/// A number cell: formatted text, raw value in `data-value`.
fn number(id: &str, value: u64, text: String) -> Markup {
    html! { td.num id=(id) data-value=(value) { (text) } }
}

pub fn failure(lang: Lang, msg: Msg) -> Markup {
    page(
        lang,
        lang.t(Msg::ErrorTitle),
        None,
        html! {
            p.error #error { (lang.t(msg)) }
            p { a href="/dashboard/" { (lang.t(Msg::Back)) } }
        },
    )
}

pub fn login(lang: Lang, csrf_token: &str, error: Option<Msg>) -> Markup {
    page(
        lang,
        lang.t(Msg::SignIn),
        None,
        html! {
            @if let Some(error) = error { p.error #error { (lang.t(error)) } }
            form.login method="post" action="/dashboard/login" {
                (csrf(csrf_token))
                label { (lang.t(Msg::Name)) input #name type="text" name="name" autocomplete="username" required; }
                label { (lang.t(Msg::Password)) input #password type="password" name="password" autocomplete="current-password" required; }
                button #sign-in type="submit" { (lang.t(Msg::SignIn)) }
            }
        },
    )
}

/// LINE's monthly count and limit, as last read, and when.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub limit: Option<u64>,
    pub used: u64,
    pub at: DateTime<Utc>,
}

impl Quota {
    /// Whether the quota guard holds sending now (as every instance would
    /// find it: the limit is reached).
    fn holds(&self, guard: bool) -> bool {
        guard && self.limit.is_some_and(|limit| self.used >= limit)
    }
}

fn quota_row(lang: Lang, settings: &crate::DashboardSettings, quota: Option<Quota>) -> Markup {
    let Some(quota) = quota else { return html! { p.note #quota-unknown { (lang.t(Msg::QuotaUnknown)) } } };
    let (guard, class, value) = match (settings.quota_guard, quota.holds(settings.quota_guard)) {
        (false, _) => (Msg::GuardOff, "note", "off"),
        (true, true) => (Msg::GuardHolding, "bad", "holding"),
        (true, false) => (Msg::GuardOpen, "ok", "open"),
    };
    html! {
        table.figures #quota {
            tr {
                th { (lang.t(Msg::QuotaUsed)) }
                (number("quota-used", quota.used, lang.items(quota.used)))
                @match quota.limit {
                    Some(limit) => {
                        td.num #quota-limit data-value=(limit) { "/ " (lang.items(limit)) }
                        td.num { (lang.percent(quota.used, limit)) }
                    },
                    None => td #quota-limit { (lang.t(Msg::Unlimited)) },
                }
                td.note { (lang.datetime(quota.at, settings.timezone)) " " (lang.t(Msg::AsOf)) }
            }
            tr {
                th { (lang.t(Msg::QuotaGuard)) }
                td #quota-guard class=(class) colspan="4" data-value=(value) { (lang.t(guard)) }
            }
        }
    }
}

pub fn overview(
    state: &DashboardState,
    signed: &Signed,
    counts: Option<OverviewCounts>,
    quota: Option<Quota>,
    replies: Option<Vec<ReplyCount>>,
    trend: Option<Trend>,
) -> Markup {
    let lang = state.settings.language;
    let body = html! {
        @if let Some(c) = counts {
            table.figures {
                tr { th { (lang.t(Msg::Friends)) } (number("following", c.following, lang.people(c.following))) }
                tr { th { (lang.t(Msg::Blocked)) } (number("blocked", c.blocked, lang.people(c.blocked))) }
                tr { th { (lang.t(Msg::Linked)) } (number("linked", c.linked, lang.people(c.linked))) }
                tr { th { (lang.t(Msg::LinkRate)) } td.num #link-rate { (lang.percent(c.linked_following, c.following)) } }
                tr { th { (lang.t(Msg::DeliveriesPending)) } (number("deliveries-pending", c.deliveries_pending, lang.items(c.deliveries_pending))) }
                tr { th { (lang.t(Msg::DeliveriesFailed)) } (number("deliveries-failed", c.deliveries_failed, lang.items(c.deliveries_failed))) }
            }
        }
        @if let Some(trend) = &trend {
            h2 { (lang.t(Msg::Trend30)) }
            div.trend {
                (trend.lines(lang, "friends-chart", Msg::Friends, &[0, 1, 2], ""))
                (trend.lines(lang, "rate-chart", Msg::LinkRate, &[3], "%"))
            }
            (trend.table(lang))
        }
        (quota_row(lang, &state.settings, quota))
        (reply_counts(lang, replies))
        h2 { (lang.t(Msg::SystemStatus)) }
        table.figures {
            tr {
                th { (lang.t(Msg::Database)) }
                @if counts.is_some() { td.ok #database { (lang.t(Msg::StatusOk)) } }
                @else { td.bad #database { (lang.t(Msg::StatusError)) ": " (lang.t(Msg::ErrorUnavailable)) } }
            }
            tr {
                th { (lang.t(Msg::Line)) }
                @if state.settings.line_configured { td.ok #line { (lang.t(Msg::LineConfigured)) } }
                @else { td.bad #line { (lang.t(Msg::LineNotConfigured)) } }
            }
        }
    };
    page(lang, lang.t(Msg::Overview), Some(signed), body)
}

/// Replies of the last 30 days per rule, answer and outcome (the reply log).
fn reply_counts(lang: Lang, replies: Option<Vec<ReplyCount>>) -> Markup {
    html! {
        h2 { (lang.t(Msg::Replies)) }
        @match replies {
            None => p.bad { (lang.t(Msg::ErrorUnavailable)) }
            Some(rows) if rows.is_empty() => p { (lang.t(Msg::NoReplies)) }
            Some(rows) => table.figures #replies {
                tr { th { (lang.t(Msg::ReplyRule)) } th { (lang.t(Msg::ReplyAnswer)) } th { (lang.t(Msg::ReplyOutcome)) } th {} }
                @for row in rows {
                    @let count = u64::try_from(row.count).unwrap_or(0);
                    tr {
                        td { (row.rule_id) } td { (row.answer) } td { (row.outcome) }
                        (number(&format!("replies-{}-{}-{}", row.rule_id, row.answer, row.outcome), count, lang.items(count)))
                    }
                }
            }
        }
    }
}

fn trigger(lang: Lang, trigger: &Trigger) -> String {
    if let Trigger::SegmentEntered { segment } = trigger {
        format!("{}: {segment}", lang.t(Msg::TriggerSegment))
    } else if let Trigger::Event { event_type, .. } = trigger {
        format!("{}: {event_type}", lang.t(Msg::TriggerEvent))
    } else if let Trigger::Schedule { expr, audience, .. } = trigger {
        format!("{}: {expr} → {audience}", lang.t(Msg::TriggerSchedule))
    } else {
        String::new()
    }
}

fn state_label(lang: Lang, paused: bool) -> &'static str {
    lang.t(if paused { Msg::Paused } else { Msg::Active })
}

pub fn campaigns(state: &DashboardState, signed: &Signed, paused: &[String]) -> Markup {
    let lang = state.settings.language;
    let body = html! {
        table.list #campaigns {
            tr { th { (lang.t(Msg::Campaign)) } th { (lang.t(Msg::Id)) } th { (lang.t(Msg::Trigger)) } th { (lang.t(Msg::State)) } }
            @for campaign in state.campaigns.iter() {
                @let is_paused = paused.contains(&campaign.id);
                tr data-campaign=(campaign.id) {
                    td { a href={ "/dashboard/campaigns/" (path_segment(&campaign.id)) } { (campaign.name) } }
                    td { code { (campaign.id) } }
                    td { (trigger(lang, &campaign.trigger)) }
                    td.state data-value=(if is_paused { "paused" } else { "active" }) { (state_label(lang, is_paused)) }
                }
            }
        }
    };
    page(lang, lang.t(Msg::Campaigns), Some(signed), body)
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// A stats number that may be null (no goal, or not known): a dash then.
fn maybe(id: &str, value: &Value, format: impl Fn(u64) -> String) -> Markup {
    match value.as_u64() {
        Some(n) => number(id, n, format(n)),
        None => html! { td.num id=(id) { "–" } },
    }
}

/// How fresh a campaign page's measured numbers (conversions, lift,
/// variants, steps) are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measurement {
    Fresh,
    /// The last measurement, taken then (a newer one is running or due later).
    AsOf(DateTime<Utc>),
    /// Not measured yet: the first measurement is running.
    Pending,
}

pub fn campaign(
    state: &DashboardState,
    signed: &Signed,
    campaign: &Campaign,
    stats: &Value,
    measurement: Measurement,
    sends: &Trend,
) -> Markup {
    let lang = state.settings.language;
    let paused = stats["state"] == "paused";
    let path = path_segment(&campaign.id);
    let body = html! {
        table.figures {
            tr { th { (lang.t(Msg::Id)) } td { code { (campaign.id) } } }
            tr { th { (lang.t(Msg::Trigger)) } td { (trigger(lang, &campaign.trigger)) } }
            tr { th { (lang.t(Msg::State)) } td #state data-value=(stats["state"].as_str().unwrap_or("")) { (state_label(lang, paused)) } }
        }
        @if signed.role.allows(OperatorRole::Editor) {
            @let (action, label) = if paused { ("resume", Msg::Resume) } else { ("pause", Msg::Pause) };
            form.inline method="post" action={ "/dashboard/campaigns/" (path) "/" (action) } {
                (csrf(&signed.csrf))
                button #toggle type="submit" { (lang.t(label)) }
            }
        }
        @match measurement {
            Measurement::Fresh => {},
            Measurement::AsOf(at) => p.note #measured-at data-value=(at.to_rfc3339()) {
                (lang.t(Msg::MeasuredAsOf)) " " (lang.datetime(at, state.settings.timezone))
            },
            Measurement::Pending => p.note #measuring { (lang.t(Msg::Measuring)) },
        }
        table.figures #funnel {
            tr { th { (lang.t(Msg::Eligible)) } (maybe("eligible", &eligible(stats), |n| lang.people(n))) }
            tr { th { (lang.t(Msg::Sent)) } (number("sent", count(&stats["sent"]), lang.items(count(&stats["sent"])))) }
            tr { th { (lang.t(Msg::Pending)) } (number("pending", count(&stats["pending"]), lang.items(count(&stats["pending"])))) }
            tr { th { (lang.t(Msg::Failed)) } (number("failed", count(&stats["failed"]), lang.items(count(&stats["failed"])))) }
            tr { th { (lang.t(Msg::Skipped)) } (number("skipped", count(&stats["skipped"]), lang.items(count(&stats["skipped"])))) }
            tr { th { (lang.t(Msg::Holdout)) } (maybe("holdout", &stats["holdout"]["users"], |n| lang.people(n))) }
            tr { th { (lang.t(Msg::Clicked)) } (number("clicked", count(&stats["clicked"]), lang.items(count(&stats["clicked"])))) }
            tr { th { (lang.t(Msg::ClickedUsers)) } (number("clicked-users", count(&stats["clicked_users"]), lang.people(count(&stats["clicked_users"])))) }
            tr { th { (lang.t(Msg::Converted)) } (maybe("converted", &stats["converted"], |n| lang.people(n))) }
            tr {
                th { (lang.t(Msg::ConversionValue)) }
                @match stats["conversion_value"].as_i64() {
                    Some(v) => td.num #conversion-value data-value=(v) { (lang.yen(v)) },
                    None => td.num #conversion-value { "–" },
                }
            }
            tr { th { (lang.t(Msg::Lift)) } (lift_cells("lift", &stats["lift"])) }
            tr { th { (lang.t(Msg::LiftInterval)) } (interval_cells("lift", &stats["lift"])) }
        }
        (skips(lang, stats))
        (steps(lang, stats))
        (variants(lang, stats))
        (line_numbers(lang, stats))
        h2 { (lang.t(Msg::SendsPerDay)) }
        (sends.bars(lang, "sends-chart", Msg::SendsPerDay, 0))
        (sends.table(lang))
        h2 { (lang.t(Msg::DryRun)) }
        p.note { (lang.t(Msg::DryRunNote)) }
        (at_form(state, signed, &format!("/dashboard/campaigns/{path}/dry-run"), "dry-run", Msg::RunDryRun))
    };
    page(lang, &campaign.name, Some(signed), body)
}

/// Users the trigger reached: the treated and the holdout (known once the
/// campaign has a goal to judge them by).
fn eligible(stats: &Value) -> Value {
    match (stats["exposed"].as_u64(), stats["holdout"]["users"].as_u64()) {
        (Some(treated), holdout) => Value::from(treated + holdout.unwrap_or(0)),
        (None, _) => Value::Null,
    }
}

/// A lift in percentage points (`+1.2pt`), with its value for tests.
fn lift_cells(id: &str, lift: &Value) -> Markup {
    match lift["absolute"].as_f64() {
        Some(absolute) => html! { td.num id=(id) data-value=(absolute) { (points(absolute)) } },
        None => html! { td.num id=(id) { "–" } },
    }
}

/// The lift's 95 % interval, `[low, high]` in percentage points.
fn interval_cells(id: &str, lift: &Value) -> Markup {
    match (lift["ci95"][0].as_f64(), lift["ci95"][1].as_f64()) {
        (Some(low), Some(high)) => html! {
            td.num id={ (id) "-interval" } data-low=(low) data-high=(high) { (points(low)) " 〜 " (points(high)) }
        },
        _ => html! { td.num id={ (id) "-interval" } { "–" } },
    }
}

fn points(share: f64) -> String {
    format!("{:+.1}pt", share * 100.0)
}

fn skips(lang: Lang, stats: &Value) -> Markup {
    html! {
        h2 { (lang.t(Msg::SkippedByReason)) }
        @match stats["skipped_by_reason"].as_object().filter(|m| !m.is_empty()) {
            Some(reasons) => table.list #skipped-by-reason {
                tr { th { (lang.t(Msg::Reason)) } th { (lang.t(Msg::Count)) } }
                @for (reason, n) in reasons {
                    tr { td { code { (reason) } } (number(&format!("skipped-{reason}"), count(n), lang.items(count(n)))) }
                }
            },
            None => p { (lang.t(Msg::Nothing)) },
        }
    }
}

fn steps(lang: Lang, stats: &Value) -> Markup {
    let Some(steps) = stats["steps"].as_object() else { return html! {} };
    html! {
        h2 { (lang.t(Msg::Steps)) }
        table.list #steps {
            tr { th { (lang.t(Msg::Step)) } th { (lang.t(Msg::Sent)) } th { (lang.t(Msg::Pending)) } th { (lang.t(Msg::Skipped)) } th { (lang.t(Msg::Exited)) } th { (lang.t(Msg::Holdout)) } }
            @for (id, step) in steps {
                tr {
                    td { code { (id) } }
                    @for key in ["sent", "pending", "skipped", "exited", "holdout"] {
                        td.num data-value=(count(&step[key])) { (lang.items(count(&step[key]))) }
                    }
                }
            }
        }
    }
}

fn variants(lang: Lang, stats: &Value) -> Markup {
    let Some(variants) = stats["variants"].as_object() else { return html! {} };
    html! {
        h2 { (lang.t(Msg::Variants)) }
        table.list #variants {
            tr { th { (lang.t(Msg::Variant)) } th { (lang.t(Msg::Users)) } th { (lang.t(Msg::Sent)) } th { (lang.t(Msg::Clicked)) } th { (lang.t(Msg::Converted)) } th { (lang.t(Msg::Lift)) } th { (lang.t(Msg::LiftInterval)) } }
            @for (id, variant) in variants {
                tr {
                    td { code { (id) } }
                    td.num { (lang.people(count(&variant["users"]))) }
                    td.num { (lang.items(count(&variant["sent"]))) }
                    td.num { (lang.items(count(&variant["clicked"]))) }
                    td.num { @match variant["converted"].as_u64() { Some(n) => (lang.people(n)), None => "–" } }
                    (lift_cells(&format!("lift-{id}"), &variant["lift"]))
                    (interval_cells(&format!("lift-{id}"), &variant["lift"]))
                }
            }
        }
    }
}

fn line_numbers(lang: Lang, stats: &Value) -> Markup {
    let line = &stats["line"];
    let unknown = lang.t(Msg::NotYet);
    html! {
        h2 { (lang.t(Msg::LineNumbers)) }
        table.figures #line-stats {
            tr { th { (lang.t(Msg::LineDelivered)) } td.num { (lang.items(count(&line["delivered"]))) } }
            tr { th { (lang.t(Msg::LineImpressions)) } td.num { @match line["unique_impression"].as_u64() { Some(n) => (lang.people(n)), None => (unknown) } } }
            tr { th { (lang.t(Msg::LineClicks)) } td.num { @match line["unique_click"].as_u64() { Some(n) => (lang.people(n)), None => (unknown) } } }
        }
    }
}

pub fn segments(state: &DashboardState, signed: &Signed, stats: &[SegmentStats]) -> Markup {
    let lang = state.settings.language;
    let tz = state.settings.timezone;
    let body = html! {
        table.list #segments {
            tr { th { (lang.t(Msg::Segment)) } th { (lang.t(Msg::Id)) } th { (lang.t(Msg::Size)) } th { (lang.t(Msg::UpdatedAt)) } }
            @for stat in stats {
                @let name = state.engine.segments().segment(&stat.segment_id).map_or("", |s| s.name.as_str());
                tr data-segment=(stat.segment_id) {
                    td { a href={ "/dashboard/segments/" (path_segment(&stat.segment_id)) } { (name) } }
                    td { code { (stat.segment_id) } }
                    td.num.size data-value=(stat.size) { (lang.people(stat.size)) }
                    td { @if let Some(at) = stat.updated_at { (lang.datetime(at, tz)) } @else { "–" } }
                }
            }
        }
    };
    page(lang, lang.t(Msg::Segments), Some(signed), body)
}

/// What a segment's page shows.
pub struct SegmentView<'a> {
    pub segment: &'a renkei_segments::Segment,
    pub size: u64,
    /// Its definition as written.
    pub source: &'a str,
    /// A page of members, and where the next starts.
    pub members: &'a [SegmentMember],
    pub next: Option<&'a str>,
    pub trend: &'a Trend,
}

pub fn segment(state: &DashboardState, signed: &Signed, view: SegmentView<'_>) -> Markup {
    let SegmentView { segment, size, source, members, next, trend } = view;
    let lang = state.settings.language;
    let path = path_segment(&segment.id);
    let body = html! {
        table.figures {
            tr { th { (lang.t(Msg::Id)) } td { code { (segment.id) } } }
            tr { th { (lang.t(Msg::Size)) } (number("size", size, lang.people(size))) }
        }
        @if let Some(description) = &segment.description { p { (description) } }
        h2 { (lang.t(Msg::Definition)) }
        pre.definition { (source) }
        h2 { (lang.t(Msg::SizeOverTime)) }
        (trend.lines(lang, "size-chart", Msg::SizeOverTime, &[0], ""))
        (trend.table(lang))
        h2 { (lang.t(Msg::Preview)) }
        p.note { (lang.t(Msg::PreviewNote)) }
        (at_form(state, signed, &format!("/dashboard/segments/{path}/preview"), "preview", Msg::RunPreview))
        h2 { (lang.t(Msg::SegmentMembers)) }
        table.list #members {
            tr { th { (lang.t(Msg::MemberId)) } th { (lang.t(Msg::LineUserId)) } th { (lang.t(Msg::Linked)) } th { (lang.t(Msg::Friendship)) } }
            @for row in members {
                tr data-user=(row.line_user.as_str()) {
                    td.member { @if let Some(m) = &row.member_id { a href={ "/dashboard/members?q=" (path_segment(m.as_str())) } { code { (m.as_str()) } } } @else { "–" } }
                    td { a href={ "/dashboard/members?q=" (row.line_user.as_str()) } { code { (row.line_user.as_str()) } } }
                    td.linked data-value=(row.member_id.is_some()) { (if row.member_id.is_some() { "✓" } else { "–" }) }
                    @let following = row.following.unwrap_or(row.member_id.is_some());
                    td.following data-value=(following) {
                        @match row.following {
                            Some(true) => (lang.t(Msg::Following)),
                            Some(false) => (lang.t(Msg::BlockedNow)),
                            None if row.member_id.is_some() => (lang.t(Msg::FollowingAssumed)),
                            None => (lang.t(Msg::NeverFollowed)),
                        }
                    }
                }
            }
        }
        @if let Some(after) = next {
            p { a #next href={ "/dashboard/segments/" (path) "?after=" (path_segment(after)) } { (lang.t(Msg::NextPage)) " →" } }
        }
    };
    page(lang, &segment.name, Some(signed), body)
}

/// A member of a segment, as its list shows it.
#[derive(Debug)]
pub struct SegmentMember {
    pub line_user: LineUserId,
    /// The linked member (ID連携), if any.
    pub member_id: Option<renkei_core::MemberId>,
    /// Following now; `None` when never seen to follow or unfollow.
    pub following: Option<bool>,
}

/// A form posting an instant (`at`, local time, now by default) to
/// `action`, for editors; viewers are told who may use it.
fn at_form(state: &DashboardState, signed: &Signed, action: &str, id: &str, button: Msg) -> Markup {
    let lang = state.settings.language;
    let now = state.clock.now().with_timezone(&state.settings.timezone).format("%Y-%m-%dT%H:%M").to_string();
    html! {
        @if signed.role.allows(OperatorRole::Editor) {
            form.inline method="post" action=(action) id={ (id) "-form" } {
                (csrf(&signed.csrf))
                label { (lang.t(Msg::PreviewAt)) " " input #at type="datetime-local" name="at" value=(now); }
                button id=(id) type="submit" { (lang.t(button)) }
            }
        } @else {
            p.note #editors-only { (lang.t(Msg::EditorsOnly)) }
        }
    }
}

/// A segment's preview at an instant.
pub fn preview(
    state: &DashboardState,
    signed: &Signed,
    segment: &renkei_segments::Segment,
    at: DateTime<Utc>,
    members: &[LineUserId],
) -> Markup {
    let lang = state.settings.language;
    let total = members.len() as u64;
    let body = html! {
        table.figures {
            tr { th { (lang.t(Msg::Segment)) } td { a href={ "/dashboard/segments/" (path_segment(&segment.id)) } { (segment.name) } } }
            tr { th { (lang.t(Msg::PreviewAt)) } td #preview-at { (lang.datetime(at, state.settings.timezone)) } }
            tr { th { (lang.t(Msg::Size)) } (number("preview-size", total, lang.people(total))) }
        }
        p.note { (lang.t(Msg::FirstRows)) }
        table.list #preview-members {
            @for user in members.iter().take(FIRST_ROWS) {
                tr { td { a href={ "/dashboard/members?q=" (user.as_str()) } { code { (user.as_str()) } } } }
            }
        }
    };
    page(lang, &format!("{}: {}", lang.t(Msg::Preview), segment.name), Some(signed), body)
}

/// Rows listed of a preview or a dry run.
const FIRST_ROWS: usize = 50;

/// A campaign's dry run at an instant: decisions counted, the first rows.
pub fn dry_run(
    state: &DashboardState,
    signed: &Signed,
    campaign: &Campaign,
    at: DateTime<Utc>,
    rows: &[renkei_scheduler::DryRunRow],
) -> Markup {
    let lang = state.settings.language;
    let mut decisions: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for row in rows {
        let key = match &row.detail {
            Some(detail) if row.decision == "skip" => format!("skip-{detail}"),
            _ => row.decision.to_string(),
        };
        *decisions.entry(key).or_default() += 1;
    }
    let total = rows.len() as u64;
    let body = html! {
        table.figures {
            tr { th { (lang.t(Msg::Campaign)) } td { a href={ "/dashboard/campaigns/" (path_segment(&campaign.id)) } { (campaign.name) } } }
            tr { th { (lang.t(Msg::PreviewAt)) } td #dry-run-at { (lang.datetime(at, state.settings.timezone)) } }
            tr { th { (lang.t(Msg::Total)) } (number("dry-run-total", total, lang.people(total))) }
        }
        table.list #decisions {
            tr { th { (lang.t(Msg::Decision)) } th { (lang.t(Msg::Count)) } }
            @for (key, n) in &decisions {
                @let (decision, reason) = key.split_once('-').unwrap_or((key.as_str(), ""));
                tr { td { (lang.decision(decision)) @if !reason.is_empty() { " (" code { (reason) } ")" } } (number(&format!("decision-{key}"), *n, lang.people(*n))) }
            }
        }
        p.note { (lang.t(Msg::FirstRows)) }
        table.list #dry-run-rows {
            tr { th { (lang.t(Msg::LineUserId)) } th { (lang.t(Msg::MemberId)) } th { (lang.t(Msg::Decision)) } th { (lang.t(Msg::Detail)) } th { (lang.t(Msg::Variant)) } th { (lang.t(Msg::Messages)) } }
            @for row in rows.iter().take(FIRST_ROWS) {
                tr data-decision=(row.decision) {
                    td { code { (row.line_user_id.as_deref().unwrap_or("–")) } }
                    td { code { (row.member_id.as_deref().unwrap_or("–")) } }
                    td { (lang.decision(row.decision)) }
                    td { (row.detail.as_deref().unwrap_or("")) (row.error.as_deref().unwrap_or("")) }
                    td { (row.variant.as_deref().unwrap_or("")) }
                    td { code.messages { (message_summary(&row.messages)) } }
                }
            }
        }
    };
    page(lang, &format!("{}: {}", lang.t(Msg::DryRun), campaign.name), Some(signed), body)
}

/// A rendered message list, short: each message's text (or its type).
fn message_summary(messages: &Value) -> String {
    let texts: Vec<String> = messages
        .as_array()
        .map(|list| {
            list.iter()
                .map(|m| m["text"].as_str().or(m["altText"].as_str()).or(m["type"].as_str()).unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default();
    let joined = texts.join(" / ");
    if joined.chars().count() > 120 { format!("{}…", joined.chars().take(120).collect::<String>()) } else { joined }
}

/// What a member look-up found.
#[derive(Debug, Default)]
pub struct LookedUp {
    pub member: Option<Member>,
    pub link: Option<Link>,
    pub line_user: Option<LineUserId>,
    pub friendship: Option<(bool, DateTime<Utc>)>,
    pub segments: Vec<String>,
    pub events: Vec<StoredEvent>,
    pub deliveries: Vec<UserDelivery>,
}

impl LookedUp {
    fn is_empty(&self) -> bool {
        self.member.is_none()
            && self.link.is_none()
            && self.friendship.is_none()
            && self.segments.is_empty()
            && self.events.is_empty()
            && self.deliveries.is_empty()
    }
}

pub fn members(state: &DashboardState, signed: &Signed, q: &str, found: Option<&LookedUp>) -> Markup {
    let lang = state.settings.language;
    let tz = state.settings.timezone;
    let body = html! {
        form.search method="get" action="/dashboard/members" {
            input #q type="search" name="q" value=(q) placeholder=(lang.t(Msg::LookupHint));
            button #search type="submit" { (lang.t(Msg::Search)) }
        }
        @match found {
            Some(found) if found.is_empty() => p.error #not-found { (lang.t(Msg::NoSuchMember)) },
            Some(found) => {
                table.figures #member {
                    tr { th { (lang.t(Msg::MemberId)) } td #member-id { @if let Some(m) = &found.member { code { (m.member_id.as_str()) } } @else { "–" } } }
                    tr { th { (lang.t(Msg::LineUserId)) } td #line-user-id { @if let Some(u) = &found.line_user { code { (u.as_str()) } } @else { "–" } } }
                    tr {
                        th { (lang.t(Msg::LinkMethod)) }
                        @match &found.link {
                            Some(link) => td #link data-value=(link.method.as_str()) { (link.method.as_str()) " · " (lang.t(Msg::LinkedAt)) " " (lang.datetime(link.linked_at, tz)) },
                            None => td #link { (lang.t(Msg::NotLinked)) },
                        }
                    }
                    tr {
                        th { (lang.t(Msg::Friendship)) }
                        @match found.friendship {
                            Some((following, since)) => td #friendship data-value=(following) {
                                (lang.t(if following { Msg::Following } else { Msg::BlockedNow })) " (" (lang.datetime(since, tz)) " " (lang.t(Msg::Since)) ")"
                            },
                            // The planner's rule: linked, no unfollow seen, is a friend.
                            None if found.link.is_some() => td #friendship data-value="true" { (lang.t(Msg::FollowingAssumed)) },
                            None => td #friendship { (lang.t(Msg::NeverFollowed)) },
                        }
                    }
                }
                h2 { (lang.t(Msg::CurrentSegments)) }
                ul #current-segments {
                    @for id in &found.segments {
                        li { a href={ "/dashboard/segments/" (path_segment(id)) } { code { (id) } } }
                    }
                }
                h2 { (lang.t(Msg::Messages)) }
                table.list #messages {
                    tr { th { (lang.t(Msg::When)) } th { (lang.t(Msg::Campaign)) } th { (lang.t(Msg::State)) } th { (lang.t(Msg::Reason)) } }
                    @for delivery in &found.deliveries {
                        tr data-status=(delivery.status) {
                            td { (lang.datetime(delivery.created_at, tz)) }
                            td { a href={ "/dashboard/campaigns/" (path_segment(&delivery.campaign_id)) } { code { (delivery.campaign_id) } } }
                            td { (lang.delivery_status(&delivery.status)) }
                            td { @if let Some(reason) = &delivery.skip_reason { code { (reason) } } }
                        }
                    }
                }
                h2 { (lang.t(Msg::RecentEvents)) }
                table.list #events {
                    tr { th { (lang.t(Msg::When)) } th { (lang.t(Msg::EventType)) } th { (lang.t(Msg::Properties)) } }
                    @for event in &found.events {
                        tr data-type=(event.event_type) {
                            td { (lang.datetime(event.occurred_at, tz)) }
                            td { code { (event.event_type) } }
                            td { code { (serde_json::Value::Object(event.properties.clone()).to_string()) } }
                        }
                    }
                }
                @if let Some(member) = &found.member {
                    h2 { (lang.t(Msg::Attributes)) }
                    table.list #attributes {
                        @for (key, value) in &member.attributes {
                            tr { th { (key) } td { (value.as_str().map_or_else(|| value.to_string(), str::to_string)) } }
                        }
                    }
                }
            },
            None => {},
        }
    };
    page(lang, lang.t(Msg::Members), Some(signed), body)
}

pub fn links(
    state: &DashboardState,
    signed: &Signed,
    counts: &OverviewCounts,
    by_method: &[(String, u64)],
    nonces: &[(String, u64)],
    trend: &Trend,
) -> Markup {
    let lang = state.settings.language;
    let body = html! {
        table.figures {
            tr { th { (lang.t(Msg::Linked)) } (number("linked", counts.linked, lang.people(counts.linked))) }
            tr { th { (lang.t(Msg::LinkRate)) } td.num #link-rate { (lang.percent(counts.linked_following, counts.following)) } }
        }
        h2 { (lang.t(Msg::ByMethod)) }
        table.list #by-method {
            tr { th { (lang.t(Msg::LinkMethod)) } th { (lang.t(Msg::Count)) } }
            @for (method, n) in by_method {
                tr { td { code { (method) } } (number(&format!("method-{method}"), *n, lang.people(*n))) }
            }
        }
        h2 { (lang.t(Msg::Nonces)) }
        @let total: u64 = nonces.iter().map(|(_, n)| n).sum();
        table.list #nonces {
            tr { th { (lang.t(Msg::Outcome)) } th { (lang.t(Msg::Count)) } }
            @for (outcome, n) in nonces {
                tr { td { (lang.outcome(outcome)) } (number(&format!("nonces-{outcome}"), *n, lang.items(*n))) }
            }
            tr { th { (lang.t(Msg::Total)) } (number("nonces-total", total, lang.items(total))) }
        }
        h2 { (lang.t(Msg::Trend30)) }
        (trend.lines(lang, "links-chart", Msg::Links, &[0, 1, 2, 3, 4, 5], ""))
        (trend.table(lang))
    };
    page(lang, lang.t(Msg::Links), Some(signed), body)
}

/// What the deliveries page shows.
pub struct DeliveriesView {
    pub counts: OverviewCounts,
    pub waiting: Vec<WaitingDeliveries>,
    pub failures: Vec<FailedRequest>,
    pub paused: Vec<String>,
    pub now: DateTime<Utc>,
    pub quota: Option<Quota>,
}

pub fn deliveries(state: &DashboardState, signed: &Signed, view: DeliveriesView) -> Markup {
    let lang = state.settings.language;
    let tz = state.settings.timezone;
    let c = view.counts;
    let held_by_quota = view.quota.is_some_and(|q| q.holds(state.settings.quota_guard));
    let body = html! {
        table.figures {
            tr { th { (lang.t(Msg::DeliveriesPending)) } (number("deliveries-pending", c.deliveries_pending, lang.items(c.deliveries_pending))) }
            tr { th { (lang.t(Msg::DeliveriesFailed)) } (number("deliveries-failed", c.deliveries_failed, lang.items(c.deliveries_failed))) }
        }
        (quota_row(lang, &state.settings, view.quota))
        h2 { (lang.t(Msg::Waiting)) }
        table.list #waiting {
            tr { th { (lang.t(Msg::Campaign)) } th { (lang.t(Msg::Count)) } th { (lang.t(Msg::NextDue)) } th { (lang.t(Msg::Why)) } }
            @for waiting in &view.waiting {
                @let why = why_waiting(waiting, view.paused.contains(&waiting.campaign_id), view.now, held_by_quota);
                tr data-campaign=(waiting.campaign_id) data-why=(format!("{why:?}")) {
                    td { a href={ "/dashboard/campaigns/" (path_segment(&waiting.campaign_id)) } { code { (waiting.campaign_id) } } }
                    td.num data-value=(waiting.count) { (lang.items(waiting.count)) }
                    td { (lang.datetime(waiting.next_due, tz)) }
                    td { (lang.t(why)) }
                }
            }
        }
        h2 { (lang.t(Msg::RecentFailures)) }
        table.list #failures {
            tr { th { (lang.t(Msg::When)) } th { (lang.t(Msg::Campaign)) } th { (lang.t(Msg::Count)) } th { (lang.t(Msg::Attempts)) } th { (lang.t(Msg::LineMessage)) } }
            @for failure in &view.failures {
                tr data-request=(failure.id) {
                    td { @if let Some(at) = failure.finished_at { (lang.datetime(at, tz)) } @else { "–" } }
                    td { @if let Some(id) = &failure.campaign_id { code { (id) } } @else { "–" } }
                    td.num { (lang.items(failure.deliveries)) }
                    td.num { (failure.attempts) }
                    td { code { (failure.error.as_deref().unwrap_or("")) } }
                }
            }
        }
    };
    page(lang, lang.t(Msg::Deliveries), Some(signed), body)
}

fn role_select(lang: Lang, current: OperatorRole) -> Markup {
    html! {
        select name="role" {
            @for role in OperatorRole::ALL {
                option value=(role.as_str()) selected[role == current] { (lang.role(role)) }
            }
        }
    }
}

pub fn operators(
    state: &DashboardState,
    signed: &Signed,
    operators: &[Operator],
    audit: &[AuditEntry],
    notice: Option<(Msg, Option<String>)>,
) -> Markup {
    let lang = state.settings.language;
    let tz = state.settings.timezone;
    let body = html! {
        @if let Some((msg, generated)) = notice {
            p.notice #notice { (lang.t(msg)) }
            @if let Some(password) = generated {
                p.notice { (lang.t(Msg::GeneratedPassword)) " " code #generated-password { (password) } }
            }
        }
        table.list #operators {
            tr { th { (lang.t(Msg::Name)) } th { (lang.t(Msg::Role)) } th { (lang.t(Msg::Updated)) } th {} }
            @for operator in operators {
                @let path = path_segment(&operator.name);
                tr data-operator=(operator.name) {
                    td { (operator.name) }
                    td {
                        form.inline method="post" action={ "/dashboard/operators/" (path) "/role" } {
                            (csrf(&signed.csrf))
                            (role_select(lang, operator.role))
                            button type="submit" { (lang.t(Msg::ChangeRole)) }
                        }
                    }
                    td { (lang.datetime(operator.updated_at, tz)) }
                    td {
                        form.inline method="post" action={ "/dashboard/operators/" (path) "/remove" } {
                            (csrf(&signed.csrf))
                            button.danger type="submit" { (lang.t(Msg::Remove)) }
                        }
                    }
                }
            }
        }
        h2 { (lang.t(Msg::AddOperator)) }
        form.add method="post" action="/dashboard/operators" {
            (csrf(&signed.csrf))
            label { (lang.t(Msg::Name)) input type="text" name="name" required; }
            label { (lang.t(Msg::Role)) (role_select(lang, OperatorRole::Viewer)) }
            label { (lang.t(Msg::PasswordOptional)) input type="password" name="password" autocomplete="new-password"; }
            button type="submit" { (lang.t(Msg::Add)) }
        }
        h2 { (lang.t(Msg::AuditLog)) }
        table.list #audit {
            tr { th { (lang.t(Msg::When)) } th { (lang.t(Msg::Who)) } th { (lang.t(Msg::What)) } th { (lang.t(Msg::Target)) } }
            @for entry in audit {
                tr data-action=(entry.action) {
                    td { (lang.datetime(entry.at, tz)) }
                    td { (entry.operator) }
                    td { (lang.action(&entry.action)) @if !entry.detail.is_empty() { " (" (entry.detail) ")" } }
                    td { (entry.target) }
                }
            }
        }
    };
    page(lang, lang.t(Msg::Operators), Some(signed), body)
}

/// Why deliveries wait: their campaign is paused, the planner put them back
/// (quiet hours, the quota), they are due later (a delay, a step, a time of
/// their own), or they are due and wait for the guard or the planner.
fn why_waiting(waiting: &WaitingDeliveries, paused: bool, now: DateTime<Utc>, held_by_quota: bool) -> Msg {
    use renkei_core::DeferReason;
    match waiting.waits_for {
        _ if paused => Msg::WhyPaused,
        Some(DeferReason::QuietHours) if waiting.next_due > now => Msg::WhyQuietHours,
        Some(DeferReason::Quota) => Msg::WhyQuota,
        _ if waiting.next_due > now => Msg::WhyLater,
        _ if held_by_quota => Msg::WhyQuota,
        _ => Msg::WhyDue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_say_what_they_wait_for() {
        use renkei_core::DeferReason::{QuietHours, Quota};
        let now = Utc::now();
        let later = now + chrono::Duration::hours(1);
        let waiting =
            |waits_for, next_due| WaitingDeliveries { campaign_id: "c".into(), waits_for, count: 1, next_due };
        assert_eq!(why_waiting(&waiting(Some(QuietHours), later), true, now, false), Msg::WhyPaused);
        assert_eq!(why_waiting(&waiting(Some(QuietHours), later), false, now, false), Msg::WhyQuietHours);
        assert_eq!(why_waiting(&waiting(Some(QuietHours), now), false, now, false), Msg::WhyDue, "quiet hours over");
        assert_eq!(why_waiting(&waiting(Some(Quota), later), false, now, false), Msg::WhyQuota);
        assert_eq!(why_waiting(&waiting(None, later), false, now, true), Msg::WhyLater);
        assert_eq!(why_waiting(&waiting(None, now), false, now, true), Msg::WhyQuota);
        assert_eq!(why_waiting(&waiting(None, now), false, now, false), Msg::WhyDue);
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(path_segment("spring_sale-2"), "spring_sale-2");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(path_segment("<x>"), "%3Cx%3E");
    }

    #[test]
    fn pages_escape_what_they_print() {
        let markup = failure(Lang::En, Msg::ErrorNotFound).into_string();
        assert!(markup.contains("Not found."), "{markup}");
        let login = login(Lang::Ja, "\"><script>alert(1)</script>", Some(Msg::WrongPassword)).into_string();
        assert!(!login.contains("<script>alert"), "{login}");
        assert!(login.contains("&quot;&gt;&lt;script&gt;"), "{login}");
        assert!(login.contains("名前またはパスワードが違います"), "{login}");
    }

    #[test]
    fn the_quota_guard_holds_at_the_limit_when_it_is_on() {
        let at = Utc::now();
        let quota = |limit, used| Quota { limit, used, at };
        assert!(quota(Some(1_000), 1_000).holds(true), "the limit reached");
        assert!(!quota(Some(1_000), 999).holds(true), "room for one");
        assert!(!quota(None, 5_000_000).holds(true), "no limit");
        assert!(!quota(Some(1_000), 1_000).holds(false), "the guard is off");
        let settings = |quota_guard| crate::DashboardSettings { quota_guard, ..Default::default() };
        let shown = |guard, q| quota_row(Lang::Ja, &settings(guard), Some(q)).into_string();
        assert!(shown(true, quota(Some(10), 10)).contains("data-value=\"holding\""));
        assert!(shown(true, quota(Some(10), 3)).contains("data-value=\"open\""));
        assert!(shown(false, quota(Some(10), 10)).contains("data-value=\"off\""));
    }

    #[test]
    fn lifts_show_their_interval_in_points() {
        let lift = serde_json::json!({"absolute": 0.125, "ci95": [-0.05, 0.3]});
        let cells = interval_cells("lift", &lift).into_string();
        assert!(cells.contains("-5.0pt 〜 +30.0pt"), "{cells}");
        assert!(lift_cells("lift", &lift).into_string().contains("+12.5pt"));
        assert!(lift_cells("lift", &serde_json::Value::Null).into_string().contains("–"));
        let stats = serde_json::json!({"exposed": 8, "holdout": {"users": 4}});
        assert_eq!(eligible(&stats), 12);
        assert_eq!(eligible(&serde_json::json!({"exposed": null, "holdout": null})), serde_json::Value::Null);
    }
}
