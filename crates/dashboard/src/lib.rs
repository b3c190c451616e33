//! renkei's operator dashboard, served by the `api` role under
//! `/dashboard/`: server-rendered HTML (maud, which escapes every value it
//! prints) that works without JavaScript, one embedded stylesheet, text
//! from one catalogue per language ([`i18n`]).
//!
//! Operators sign in with a name and password ([`auth`]: argon2id); a
//! session is a random cookie token whose SHA-256 is stored with the
//! session's CSRF token ([`renkei_store::OperatorStore`]), so any instance
//! accepts it; it expires after `[dashboard] session_idle` unused. Every
//! POST carries the CSRF token (compared in constant time); failed sign-ins
//! are counted per name and per client address in the store and refused
//! with 429 past `sign_in_max_failures` within `sign_in_window`. Viewers
//! read, editors also pause and resume campaigns, admins also manage
//! operators ([`manage`]); every change is in the audit log.
//!
//! | route | page |
//! |---|---|
//! | `GET/POST /dashboard/login`, `POST /dashboard/logout` | sign-in, sign-out |
//! | `GET /dashboard/` | overview (with the last 30 days' levels, [`series`] of the store's hourly counts drawn by [`chart`]) |
//! | `GET /dashboard/segments`, `GET /dashboard/segments/{id}` | segments and their sizes, one segment's definition and members |
//! | `GET /dashboard/campaigns`, `GET /dashboard/campaigns/{id}` | campaigns, one campaign's stats |
//! | `GET /dashboard/members?q=` | a member or LINE user looked up (support desk) |
//! | `GET /dashboard/links` | ID連携: links by method, link attempts by outcome |
//! | `GET /dashboard/deliveries` | what waits and why, recent failures with LINE's answer |
//! | `POST /dashboard/campaigns/{id}/pause`, `…/resume` | pause, resume (editors) |
//! | `POST /dashboard/segments/{id}/preview`, `POST /dashboard/campaigns/{id}/dry-run` | a segment's members, a campaign's dry run at an instant (editors) |
//! | `GET/POST /dashboard/operators`, `POST /dashboard/operators/{name}/role`, `…/remove` | operators and the audit log (admins) |

pub mod auth;
pub mod chart;
pub mod i18n;
pub mod manage;
pub mod measured;
mod pages;
pub mod rollup;
pub mod series;
mod trend;
mod web;

pub use i18n::Lang;
pub use web::Failure;

use axum::Router;
use chrono_tz::Tz;
use renkei_api::CampaignsStore;
use renkei_campaigns::CampaignSet;
use renkei_core::Clock;
use renkei_evaluator::MembershipEngine;
use std::sync::Arc;
use std::time::Duration;

renkei_store::store_view! {
    /// What the dashboard reads and writes besides the campaigns' stats.
    pub struct DashboardStore {
        operators: OperatorStore,
        overview: OverviewReads,
        members: MemberStore,
        leases: LeaseStore,
        replies: ReplyStore,
    }
}

/// `[dashboard]` and what the pages need from the rest of the config.
#[derive(Debug, Clone)]
pub struct DashboardSettings {
    pub language: Lang,
    /// A session unused this long has expired.
    pub session_idle: Duration,
    /// Failed sign-ins per name, and per client address, within `sign_in_window` before 429.
    pub sign_in_max_failures: u32,
    pub sign_in_window: Duration,
    /// How long a failed sign-in's answer is held back.
    pub failure_delay: Duration,
    /// `Secure` cookies (`server.public_base_url` is https).
    pub secure_cookies: bool,
    /// Dates are shown in this timezone.
    pub timezone: Tz,
    /// Whether a LINE channel access token is configured.
    pub line_configured: bool,
    /// `[dispatch] quota_guard`: sending pauses at the monthly limit.
    pub quota_guard: bool,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self {
            language: Lang::Ja,
            session_idle: Duration::from_secs(30 * 60),
            sign_in_max_failures: 5,
            sign_in_window: Duration::from_secs(15 * 60),
            failure_delay: Duration::from_millis(250),
            secure_cookies: false,
            timezone: chrono_tz::Asia::Tokyo,
            line_configured: false,
            quota_guard: true,
        }
    }
}

#[derive(Clone)]
pub struct DashboardState {
    pub store: DashboardStore,
    pub campaigns_store: CampaignsStore,
    pub campaigns: Arc<CampaignSet>,
    /// Segment sizes and members (it need not be running).
    pub engine: Arc<MembershipEngine>,
    pub clock: Arc<dyn Clock>,
    pub settings: Arc<DashboardSettings>,
    /// What a campaign's dry run needs (the scheduler's, as `renkei campaigns dry-run`).
    pub dry_run: Arc<DryRunSetup>,
    /// Campaign pages' measured numbers, the last ones and those being taken.
    pub measured: measured::MeasuredCache,
}

/// The scheduler's dry run, as the dashboard runs it.
pub struct DryRunSetup {
    pub store: renkei_scheduler::DryRunStore,
    pub global: renkei_dispatcher::GlobalPolicy,
    /// For tracked links in the rendered messages.
    pub public_base_url: String,
}

/// Every `/dashboard` route, with its own body limit (16 KiB: forms only).
pub fn router(state: DashboardState) -> Router {
    web::router(state)
}
