//! The HTTP side: routes, the signed-in operator ([`Signed`]), forms and
//! their CSRF check, failures as pages, and the headers every answer gets.

use crate::auth::{self, LOGIN_CSRF_COOKIE, SESSION_COOKIE};
use crate::i18n::Msg;
use crate::manage::{self, ManageError};
use crate::measured::Reading;
use crate::pages::Measurement;
use crate::series;
use crate::trend::{Column, Format, Trend};
use crate::{DashboardState, pages};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use renkei_store::{HourCount, OperatorRole, StoreError};
use std::net::SocketAddr;

/// Forms are small; anything larger is refused (413) before it is read.
const BODY_LIMIT: usize = 16 * 1024;
/// A session's last-seen time is written at most this often.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(30);

pub fn router(state: DashboardState) -> Router {
    Router::new()
        .route("/dashboard", get(|| async { see_other("/dashboard/") }))
        .route("/dashboard/", get(overview))
        .route("/dashboard/login", get(login_form).post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/segments", get(segments))
        .route("/dashboard/segments/{id}", get(segment))
        .route("/dashboard/segments/{id}/preview", post(preview))
        .route("/dashboard/members", get(members))
        .route("/dashboard/deliveries", get(deliveries))
        .route("/dashboard/links", get(links))
        .route("/dashboard/campaigns", get(campaigns))
        .route("/dashboard/campaigns/{id}", get(campaign))
        .route("/dashboard/campaigns/{id}/pause", post(pause))
        .route("/dashboard/campaigns/{id}/resume", post(resume))
        .route("/dashboard/campaigns/{id}/dry-run", post(dry_run))
        .route("/dashboard/operators", get(operators).post(add_operator))
        .route("/dashboard/operators/{name}/role", post(set_role))
        .route("/dashboard/operators/{name}/remove", post(remove_operator))
        .route("/dashboard/assets/dashboard.css", get(stylesheet))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(state.clone(), finish))
        .with_state(state)
}

/// Why a request got no page of its own: rendered as an error page in the
/// configured language by [`finish`] (or a redirect to sign in).
#[derive(Debug, Clone)]
pub struct Failure {
    status: StatusCode,
    msg: Msg,
    retry_after: Option<u64>,
}

impl Failure {
    fn new(status: StatusCode, msg: Msg) -> Self {
        Self { status, msg, retry_after: None }
    }

    /// Not signed in (or the session expired): to the sign-in page.
    fn sign_in() -> Self {
        Self::new(StatusCode::SEE_OTHER, Msg::SignIn)
    }

    fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, Msg::ErrorForbidden)
    }

    fn csrf() -> Self {
        Self::new(StatusCode::FORBIDDEN, Msg::ErrorCsrf)
    }

    fn bad_form() -> Self {
        Self::new(StatusCode::BAD_REQUEST, Msg::ErrorBadForm)
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, Msg::ErrorNotFound)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        tracing::warn!(%error, "dashboard: store error");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, Msg::ErrorUnavailable)
    }
}

impl From<ManageError> for Failure {
    fn from(error: ManageError) -> Self {
        match error {
            ManageError::InvalidName => Self::new(StatusCode::BAD_REQUEST, Msg::ErrorInvalidName),
            ManageError::WeakPassword => Self::new(StatusCode::BAD_REQUEST, Msg::ErrorWeakPassword),
            ManageError::Exists(_) => Self::new(StatusCode::CONFLICT, Msg::ErrorExists),
            ManageError::NoSuchOperator(_) => Self::new(StatusCode::NOT_FOUND, Msg::ErrorNoSuchOperator),
            ManageError::Store(error) => error.into(),
            ManageError::Hash(error) => {
                tracing::error!(%error, "dashboard: hashing a password failed");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, Msg::ErrorUnavailable)
            }
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// Renders failures as pages and sets the headers every dashboard answer
/// gets: no caching, no framing, no scripts or styles from elsewhere.
async fn finish(State(state): State<DashboardState>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    if let Some(failure) = response.extensions_mut().remove::<Failure>() {
        response = if failure.status == StatusCode::SEE_OTHER {
            see_other("/dashboard/login")
        } else {
            let mut page = (failure.status, pages::failure(state.settings.language, failure.msg)).into_response();
            if let Some(seconds) = failure.retry_after {
                page.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            page
        };
    }
    let headers = response.headers_mut();
    let set = [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// `span` before `now` (the earliest instant when that is out of range).
fn before(now: chrono::DateTime<chrono::Utc>, span: std::time::Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::Duration::from_std(span)
        .ok()
        .and_then(|span| now.checked_sub_signed(span))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// The operator a request's session cookie belongs to; without a live
/// session, a redirect to the sign-in page.
#[derive(Debug, Clone)]
pub struct Signed {
    pub name: String,
    pub role: OperatorRole,
    pub csrf: String,
    token_hash: String,
}

impl Signed {
    fn require(&self, role: OperatorRole) -> Result<(), Failure> {
        if self.role.allows(role) { Ok(()) } else { Err(Failure::forbidden()) }
    }

    /// A posted form with this session's CSRF token, from an operator with `role`.
    fn form(&self, body: &[u8], role: OperatorRole) -> Result<Form, Failure> {
        let form = Form::parse(body)?;
        self.check(&form)?;
        self.require(role)?;
        Ok(form)
    }

    /// The form's `csrf` field must be this session's token.
    fn check(&self, form: &Form) -> Result<(), Failure> {
        match form.get("csrf") {
            Some(token) if auth::same(token, &self.csrf) => Ok(()),
            _ => Err(Failure::csrf()),
        }
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    auth::cookie_value(headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()), name)
}

impl FromRequestParts<DashboardState> for Signed {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &DashboardState) -> Result<Self, Failure> {
        let token = cookie(&parts.headers, SESSION_COOKIE).ok_or_else(Failure::sign_in)?;
        let token_hash = auth::token_hash(token);
        let now = state.clock.now();
        let operators = &state.store.operators;
        let seen_since = before(now, state.settings.session_idle);
        let session = operators.session(&token_hash, seen_since).await?.ok_or_else(Failure::sign_in)?;
        if now - session.last_seen_at >= TOUCH_EVERY {
            operators.touch_session(&token_hash, now).await?;
        }
        Ok(Signed { name: session.operator, role: session.role, csrf: session.csrf_token, token_hash })
    }
}

/// The client's address, as the connection reports it (a proxy's when
/// behind one).
struct ClientAddr(String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let addr = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(a)| a.ip().to_string());
        Ok(ClientAddr(addr.unwrap_or_else(|| "unknown".to_string())))
    }
}

/// A posted `application/x-www-form-urlencoded` body.
pub struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Result<Self, Failure> {
        serde_urlencoded::from_bytes(body).map(Form).map_err(|_| Failure::bad_form())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("dashboard.css")).into_response()
}

async fn login_form(State(state): State<DashboardState>) -> Response {
    let csrf = auth::random_token();
    let cookie = auth::cookie(LOGIN_CSRF_COOKIE, &csrf, state.settings.secure_cookies, None);
    ([(header::SET_COOKIE, cookie)], pages::login(state.settings.language, &csrf, None)).into_response()
}

async fn login(
    State(state): State<DashboardState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let form = Form::parse(&body)?;
    let csrf = form.get("csrf").ok_or_else(Failure::csrf)?;
    match cookie(&headers, LOGIN_CSRF_COOKIE) {
        Some(expected) if auth::same(csrf, expected) => {}
        _ => return Err(Failure::csrf()),
    }
    let (Some(name), Some(password)) = (form.get("name"), form.get("password")) else {
        return Err(Failure::bad_form());
    };
    let settings = &state.settings;
    let operators = &state.store.operators;
    let now = state.clock.now();
    let window_start = before(now, settings.sign_in_window);
    // A name no operator can have is counted under one subject: the table
    // stays small however many made-up names are tried.
    let name_subject = if manage::valid_name(name) { name } else { "<invalid>" };
    let subjects = [format!("name:{name_subject}"), format!("addr:{addr}")];
    for subject in &subjects {
        if operators.sign_in_failures(subject, window_start).await? >= u64::from(settings.sign_in_max_failures) {
            tracing::warn!(subject = subject.split(':').next(), "dashboard: sign-in refused after repeated failures");
            let mut failure = Failure::new(StatusCode::TOO_MANY_REQUESTS, Msg::ErrorTooMany);
            failure.retry_after = Some(settings.sign_in_window.as_secs());
            return Err(failure);
        }
    }
    let known = operators.operator_with_hash(name).await?;
    let hash = known.as_ref().map_or_else(|| auth::decoy_hash().to_string(), |(_, hash)| hash.clone());
    let password = password.to_string();
    let matches = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash)).await.unwrap_or(false);
    let Some((operator, _)) = known.filter(|_| matches) else {
        let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
        operators.record_sign_in_failure(&subjects, now, window_start).await?;
        tokio::time::sleep(settings.failure_delay).await;
        let csrf = auth::random_token();
        let cookie = auth::cookie(LOGIN_CSRF_COOKIE, &csrf, settings.secure_cookies, None);
        let page = pages::login(settings.language, &csrf, Some(Msg::WrongPassword));
        return Ok((StatusCode::UNAUTHORIZED, [(header::SET_COOKIE, cookie)], page).into_response());
    };
    operators.clear_sign_in_failures(&subjects[0]).await?;
    operators.delete_idle_sessions(before(now, settings.session_idle)).await?;
    let token = auth::random_token();
    operators.create_session(&auth::token_hash(&token), &operator.name, &auth::random_token(), now).await?;
    manage::audit(operators.as_ref(), &operator.name, "sign_in", "", "", now).await?;
    tracing::info!(operator = %operator.name, "dashboard: signed in");
    let mut response = see_other("/dashboard/");
    let cookies = [
        auth::cookie(SESSION_COOKIE, &token, settings.secure_cookies, None),
        auth::cookie(LOGIN_CSRF_COOKIE, "", settings.secure_cookies, Some(0)),
    ];
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    Ok(response)
}

async fn logout(State(state): State<DashboardState>, signed: Signed, body: Bytes) -> Result<Response, Failure> {
    signed.check(&Form::parse(&body)?)?;
    let operators = &state.store.operators;
    operators.delete_session(&signed.token_hash).await?;
    manage::audit(operators.as_ref(), &signed.name, "sign_out", "", "", state.clock.now()).await?;
    let mut response = see_other("/dashboard/login");
    let cookie = auth::cookie(SESSION_COOKIE, "", state.settings.secure_cookies, Some(0));
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// LINE's count of this month's messages and its limit, as the dispatcher
/// last read them (its quota guard's mark); `None` when not read yet.
async fn quota(state: &DashboardState) -> Option<pages::Quota> {
    match state.store.leases.mark(renkei_dispatcher::QUOTA_MARK).await {
        Ok(mark) => mark.and_then(|(value, at)| {
            renkei_dispatcher::parse_quota_mark(&value).map(|(limit, used)| pages::Quota { limit, used, at })
        }),
        Err(error) => {
            tracing::warn!(%error, "dashboard: the quota mark is unavailable");
            None
        }
    }
}

async fn overview(State(state): State<DashboardState>, signed: Signed) -> Response {
    // A database problem is shown on the page, plainly, not as an error page.
    let counts = state.store.overview.overview_counts().await;
    if let Err(error) = &counts {
        tracing::warn!(%error, "dashboard: overview counts unavailable");
    }
    let quota = quota(&state).await;
    let since = state.clock.now() - chrono::Duration::days(30);
    let replies = state.store.replies.reply_counts(since).await;
    if let Err(error) = &replies {
        tracing::warn!(%error, "dashboard: reply counts unavailable");
    }
    let trend = match &counts {
        Ok(counts) => overview_trend(&state, counts)
            .await
            .inspect_err(|error| tracing::warn!(%error, "dashboard: the overview's series are unavailable"))
            .ok(),
        Err(_) => None,
    };
    pages::overview(&state, &signed, counts.ok(), quota, replies.ok(), trend).into_response()
}

/// Days shown by every trend.
const TREND_DAYS: u32 = 30;

/// The trends' days, and where their counts start.
struct Days {
    dates: Vec<chrono::NaiveDate>,
    since: chrono::DateTime<chrono::Utc>,
    tz: chrono_tz::Tz,
}

impl Days {
    fn of(state: &DashboardState) -> Self {
        let (now, tz) = (state.clock.now(), state.settings.timezone);
        Days { dates: series::dates(now, tz, TREND_DAYS), since: series::since(now, tz, TREND_DAYS), tz }
    }

    async fn counts(
        &self,
        state: &DashboardState,
        metric: &str,
        key: Option<&str>,
    ) -> Result<Vec<HourCount>, StoreError> {
        state.store.overview.hourly_counts(metric, key, self.since).await
    }

    /// A flow: each day's sum.
    async fn sums(&self, state: &DashboardState, metric: &str, key: Option<&str>) -> Result<Vec<i64>, StoreError> {
        Ok(series::daily_sums(&self.counts(state, metric, key).await?, None, &self.dates, self.tz))
    }

    /// A level at each day's end, walked back from `current`.
    async fn levels(&self, state: &DashboardState, metric: &str, current: u64) -> Result<Vec<i64>, StoreError> {
        let counts = self.counts(state, metric, None).await?;
        Ok(series::daily_levels(&counts, i64::try_from(current).unwrap_or(i64::MAX), &self.dates, self.tz))
    }

    fn column(id: &'static str, label: Msg, values: Vec<i64>, format: Format) -> Column {
        Column { id, label, values, format }
    }
}

/// Friends, blocked, linked and the ID連携 rate at each day's end, follows and unfollows per day.
async fn overview_trend(state: &DashboardState, counts: &renkei_store::OverviewCounts) -> Result<Trend, StoreError> {
    let days = Days::of(state);
    let columns = vec![
        Days::column("friends", Msg::Friends, days.levels(state, "friends", counts.following).await?, Format::People),
        Days::column("blocked", Msg::Blocked, days.levels(state, "blocked", counts.blocked).await?, Format::People),
        Days::column("linked", Msg::Linked, days.levels(state, "linked", counts.linked).await?, Format::People),
        Days::column(
            "rate",
            Msg::LinkRate,
            days.levels(state, "linked_friends", counts.linked_following).await?,
            Format::PercentOf(0),
        ),
        Days::column("follows", Msg::Follows, days.sums(state, "follow", None).await?, Format::Items),
        Days::column("unfollows", Msg::Unfollows, days.sums(state, "unfollow", None).await?, Format::Items),
    ];
    Ok(Trend { id: "trend", dates: days.dates, columns })
}

/// Members listed per page of a segment.
const SEGMENT_PAGE: u32 = 50;

impl From<renkei_evaluator::MembershipError> for Failure {
    fn from(error: renkei_evaluator::MembershipError) -> Self {
        match error {
            renkei_evaluator::MembershipError::UnknownSegment(_) => Failure::not_found(),
            renkei_evaluator::MembershipError::Store(error) => error.into(),
            other => {
                tracing::warn!(error = %other, "dashboard: segment reads failed");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, Msg::ErrorUnavailable)
            }
        }
    }
}

/// A query string's fields (a malformed one reads as empty).
fn query(raw: Option<String>) -> Form {
    raw.and_then(|q| Form::parse(q.as_bytes()).ok()).unwrap_or(Form(Vec::new()))
}

async fn segments(State(state): State<DashboardState>, signed: Signed) -> Result<Response, Failure> {
    // Sizes from the hourly counts, not a count of the memberships.
    let ids: Vec<&str> = state.engine.segments().ids().collect();
    let stats = state.store.overview.segment_sizes(&ids).await?;
    Ok(pages::segments(&state, &signed, &stats).into_response())
}

async fn segment(
    State(state): State<DashboardState>,
    signed: Signed,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let definition = state.engine.segments().segment(&id).ok_or_else(Failure::not_found)?;
    let form = query(raw);
    let after = form.get("after").filter(|a| !a.is_empty());
    let size = state.store.overview.segment_sizes(&[id.as_str()]).await?.first().map_or(0, |s| s.size);
    let members = state.engine.store().reads.segment_members(&id, after, SEGMENT_PAGE).await?;
    let next = (members.len() == SEGMENT_PAGE as usize).then(|| members.last().map(|m| m.to_string())).flatten();
    let mut rows = Vec::with_capacity(members.len());
    for line_user in members {
        // By key, 50 a page: the link and the friendship of each.
        let member_id = state.store.members.get_link_by_line_user(&line_user).await?.map(|link| link.member_id);
        let following = state.store.overview.friendship(&line_user).await?.map(|(following, _)| following);
        rows.push(pages::SegmentMember { line_user, member_id, following });
    }
    // The definition as written: its file, read now (small; escaped when shown).
    let source = tokio::fs::read_to_string(&definition.file).await.unwrap_or_default();
    let trend = segment_trend(&state, &id, size).await?;
    let view = pages::SegmentView {
        segment: definition,
        size,
        source: &source,
        members: &rows,
        next: next.as_deref(),
        trend: &trend,
    };
    Ok(pages::segment(&state, &signed, view).into_response())
}

/// A segment's size at each day's end (walked back over its entries and exits), entries and exits per day.
async fn segment_trend(state: &DashboardState, id: &str, size: u64) -> Result<Trend, StoreError> {
    let days = Days::of(state);
    let entered = days.counts(state, "entered", Some(id)).await?;
    let exited = days.counts(state, "exited", Some(id)).await?;
    let changes: Vec<HourCount> =
        entered.iter().cloned().chain(exited.iter().map(|c| HourCount { n: -c.n, ..c.clone() })).collect();
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    let columns = vec![
        Days::column("size", Msg::Size, series::daily_levels(&changes, size, &days.dates, days.tz), Format::People),
        Days::column("entered", Msg::Entered, series::daily_sums(&entered, None, &days.dates, days.tz), Format::People),
        Days::column("exited", Msg::Left, series::daily_sums(&exited, None, &days.dates, days.tz), Format::People),
    ];
    Ok(Trend { id: "size-trend", dates: days.dates, columns })
}

/// The instant of a preview or dry run: the form's local `at` (now when empty).
fn instant(state: &DashboardState, form: &Form) -> Result<chrono::DateTime<chrono::Utc>, Failure> {
    use chrono::TimeZone;
    let Some(text) = form.get("at").map(str::trim).filter(|t| !t.is_empty()) else { return Ok(state.clock.now()) };
    let local = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(text, format).ok())
        .ok_or_else(Failure::bad_form)?;
    let at = state.settings.timezone.from_local_datetime(&local).earliest().ok_or_else(Failure::bad_form)?;
    Ok(at.to_utc())
}

async fn preview(
    State(state): State<DashboardState>,
    signed: Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let form = signed.form(&body, OperatorRole::Editor)?;
    let definition = state.engine.segments().segment(&id).ok_or_else(Failure::not_found)?;
    let at = instant(&state, &form)?;
    // The segment engine's own preview, as `renkei segments preview` runs it.
    let members = state.engine.preview(&id, at).await?;
    let detail = format!("at={} members={}", at.to_rfc3339(), members.len());
    manage::audit(state.store.operators.as_ref(), &signed.name, "preview", &id, &detail, state.clock.now()).await?;
    Ok(pages::preview(&state, &signed, definition, at, &members).into_response())
}

async fn dry_run(
    State(state): State<DashboardState>,
    signed: Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let form = signed.form(&body, OperatorRole::Editor)?;
    let campaign = state.campaigns.get(&id).ok_or_else(Failure::not_found)?;
    let at = instant(&state, &form)?;
    let setup = &state.dry_run;
    // The scheduler's dry run, as `renkei campaigns dry-run` runs it.
    let rows = renkei_scheduler::dry_run(
        &setup.store,
        &state.engine,
        &state.campaigns,
        &id,
        at,
        &setup.global,
        &setup.public_base_url,
    )
    .await
    .map_err(|error| {
        tracing::warn!(%error, campaign = %id, "dashboard: dry run failed");
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, Msg::ErrorUnavailable)
    })?;
    let detail = format!("at={} recipients={}", at.to_rfc3339(), rows.len());
    manage::audit(state.store.operators.as_ref(), &signed.name, "dry_run", &id, &detail, state.clock.now()).await?;
    Ok(pages::dry_run(&state, &signed, campaign, at, &rows).into_response())
}

async fn members(
    State(state): State<DashboardState>,
    signed: Signed,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let form = query(raw);
    let q = form.get("q").map(str::trim).unwrap_or_default();
    let found = if q.is_empty() { None } else { Some(look_up(&state, q).await?) };
    Ok(pages::members(&state, &signed, q, found.as_ref()).into_response())
}

/// Events and messages shown per member look-up.
const LOOK_UP_ROWS: u32 = 30;

/// A member or LINE user, found by either id.
async fn look_up(state: &DashboardState, q: &str) -> Result<pages::LookedUp, Failure> {
    let store = &state.store;
    let mut found = pages::LookedUp::default();
    if let Ok(line_user) = renkei_core::LineUserId::parse(q) {
        found.link = store.members.get_link_by_line_user(&line_user).await?;
        found.line_user = Some(line_user);
    } else if let Ok(member_id) = renkei_core::MemberId::parse(q) {
        found.link = store.members.get_link(&member_id).await?;
        found.member = store.members.get_member(&member_id).await?;
    }
    if let Some(link) = &found.link {
        found.line_user = Some(link.line_user_id.clone());
        if found.member.is_none() {
            found.member = store.members.get_member(&link.member_id).await?;
        }
    }
    let member_id = found.member.as_ref().map(|m| m.member_id.clone());
    found.events = store.overview.recent_events_of(found.line_user.as_ref(), member_id.as_ref(), LOOK_UP_ROWS).await?;
    if let Some(line_user) = &found.line_user {
        found.deliveries = store.overview.recent_deliveries_to(line_user, LOOK_UP_ROWS).await?;
        found.friendship = store.overview.friendship(line_user).await?;
        found.segments = state.engine.store().reads.user_memberships(line_user).await?.into_iter().collect();
    }
    Ok(found)
}

/// Failed requests listed on the deliveries page.
const FAILURES_SHOWN: u32 = 50;

async fn deliveries(State(state): State<DashboardState>, signed: Signed) -> Result<Response, Failure> {
    let reads = &state.store.overview;
    let counts = reads.overview_counts().await?;
    let waiting = reads.waiting_by_campaign().await?;
    let failures = reads.recent_failures(FAILURES_SHOWN).await?;
    let paused = state.campaigns_store.schedule.paused_campaigns().await?;
    let now = state.clock.now();
    let quota = quota(&state).await;
    Ok(pages::deliveries(&state, &signed, pages::DeliveriesView { counts, waiting, failures, paused, now, quota })
        .into_response())
}

/// The ID連携 page counts link attempts over this many days.
const LINK_ATTEMPT_DAYS: i64 = 30;

async fn links(State(state): State<DashboardState>, signed: Signed) -> Result<Response, Failure> {
    let reads = &state.store.overview;
    let now = state.clock.now();
    let by_method = reads.links_by_method().await?;
    let nonces = reads.link_nonces_by_result(now - chrono::Duration::days(LINK_ATTEMPT_DAYS), now).await?;
    let counts = reads.overview_counts().await?;
    let trend = links_trend(&state).await?;
    Ok(pages::links(&state, &signed, &counts, &by_method, &nonces, &trend).into_response())
}

/// Link tokens and nonces issued, outcomes, links and unlinks per day.
async fn links_trend(state: &DashboardState) -> Result<Trend, StoreError> {
    let days = Days::of(state);
    let attempts = days.counts(state, "attempt", None).await?;
    let outcome = |key: &str| series::daily_sums(&attempts, Some(key), &days.dates, days.tz);
    let columns = vec![
        Days::column("tokens", Msg::LinkTokensIssued, days.sums(state, "link_token", None).await?, Format::Items),
        Days::column("nonces", Msg::NoncesIssued, days.sums(state, "nonce", None).await?, Format::Items),
        Days::column("ok", Msg::OutcomeOk, outcome("ok"), Format::Items),
        Days::column("failed", Msg::OutcomeFailed, outcome("failed"), Format::Items),
        Days::column("links", Msg::LinksMade, days.sums(state, "link", None).await?, Format::Items),
        Days::column("unlinks", Msg::Unlinks, days.sums(state, "unlink", None).await?, Format::Items),
        Days::column("conflict", Msg::OutcomeConflict, outcome("conflict"), Format::Items),
    ];
    Ok(Trend { id: "links-trend", dates: days.dates, columns })
}

async fn campaigns(State(state): State<DashboardState>, signed: Signed) -> Result<Response, Failure> {
    let paused = state.campaigns_store.schedule.paused_campaigns().await?;
    Ok(pages::campaigns(&state, &signed, &paused).into_response())
}

async fn campaign(
    State(state): State<DashboardState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    use renkei_api::campaigns::{Period, campaign_counted, campaign_measured, with_measured};
    let campaign = state.campaigns.get(&id).ok_or_else(Failure::not_found)?;
    let now = state.clock.now();
    // Counts are read fresh; the measured numbers may be the last ones (with their time).
    let (store, campaigns, tz, key) =
        (state.campaigns_store.clone(), state.campaigns.clone(), state.settings.timezone, id.clone());
    let measure = async move {
        let campaign = campaigns.get(&key).ok_or_else(|| StoreError::Conflict(format!("campaign {key} is gone")))?;
        campaign_measured(&store, campaign, now, tz, Period::default()).await
    };
    let (counted, measured) =
        tokio::join!(campaign_counted(&state.campaigns_store, campaign), state.measured.read(&id, now, measure));
    let mut stats = counted?;
    let measured = measured.map_err(|error| {
        tracing::warn!(campaign = %id, %error, "dashboard: measuring the campaign failed");
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, Msg::ErrorUnavailable)
    })?;
    let measured_at = match measured {
        Reading::Fresh(m) => {
            with_measured(&mut stats, &m.value);
            Measurement::Fresh
        }
        Reading::Stale(m) => {
            with_measured(&mut stats, &m.value);
            Measurement::AsOf(m.at)
        }
        Reading::Pending => Measurement::Pending,
    };
    let days = Days::of(&state);
    let sent = days.sums(&state, "sent", Some(&id)).await?;
    let sends =
        Trend { id: "sends", dates: days.dates, columns: vec![Days::column("sent", Msg::Sent, sent, Format::Items)] };
    Ok(pages::campaign(&state, &signed, campaign, &stats, measured_at, &sends).into_response())
}

async fn set_paused(
    state: DashboardState,
    signed: Signed,
    id: String,
    body: Bytes,
    paused: bool,
) -> Result<Response, Failure> {
    signed.check(&Form::parse(&body)?)?;
    signed.require(OperatorRole::Editor)?;
    if state.campaigns.get(&id).is_none() {
        return Err(Failure::not_found());
    }
    let now = state.clock.now();
    // The same pause state the API's pause and resume set, read by the scheduler and the planner.
    state.campaigns_store.schedule.set_campaign_paused(&id, paused, now).await?;
    let action = if paused { "pause" } else { "resume" };
    manage::audit(state.store.operators.as_ref(), &signed.name, action, &id, "", now).await?;
    tracing::info!(campaign = %id, paused, operator = %signed.name, "campaign state changed from the dashboard");
    Ok(see_other(&format!("/dashboard/campaigns/{}", pages::path_segment(&id))))
}

async fn pause(
    State(state): State<DashboardState>,
    signed: Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    set_paused(state, signed, id, body, true).await
}

async fn resume(
    State(state): State<DashboardState>,
    signed: Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    set_paused(state, signed, id, body, false).await
}

/// The operators page, with `notice` (and a generated password) after a change.
async fn operators_page(
    state: &DashboardState,
    signed: &Signed,
    notice: Option<(Msg, Option<String>)>,
) -> Result<Response, Failure> {
    signed.require(OperatorRole::Admin)?;
    let operators = state.store.operators.operators().await?;
    let audit = state.store.operators.audit_log(200).await?;
    Ok(pages::operators(state, signed, &operators, &audit, notice).into_response())
}

async fn operators(State(state): State<DashboardState>, signed: Signed) -> Result<Response, Failure> {
    operators_page(&state, &signed, None).await
}

fn role_of(form: &Form) -> Result<OperatorRole, Failure> {
    form.get("role").and_then(OperatorRole::parse).ok_or_else(Failure::bad_form)
}

async fn add_operator(State(state): State<DashboardState>, signed: Signed, body: Bytes) -> Result<Response, Failure> {
    let form = signed.form(&body, OperatorRole::Admin)?;
    let name = form.get("name").ok_or_else(Failure::bad_form)?;
    let role = role_of(&form)?;
    let (password, generated) = match form.get("password").filter(|p| !p.is_empty()) {
        Some(password) => (password.to_string(), None),
        None => {
            let password = auth::generate_password();
            (password.clone(), Some(password))
        }
    };
    let store = state.store.operators.as_ref();
    manage::add(store, &signed.name, name, role, &password, state.clock.now()).await?;
    operators_page(&state, &signed, Some((Msg::Done, generated))).await
}

async fn set_role(
    State(state): State<DashboardState>,
    signed: Signed,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let form = signed.form(&body, OperatorRole::Admin)?;
    let role = role_of(&form)?;
    manage::set_role(state.store.operators.as_ref(), &signed.name, &name, role, state.clock.now()).await?;
    operators_page(&state, &signed, Some((Msg::Done, None))).await
}

async fn remove_operator(
    State(state): State<DashboardState>,
    signed: Signed,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    signed.check(&Form::parse(&body)?)?;
    signed.require(OperatorRole::Admin)?;
    manage::remove(state.store.operators.as_ref(), &signed.name, &name, state.clock.now()).await?;
    operators_page(&state, &signed, Some((Msg::Done, None))).await
}
