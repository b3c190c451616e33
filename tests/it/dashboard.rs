//! The operator dashboard over plain HTTP (the security rules that need no
//! browser: cookie flags, CSRF, the sign-in limit, idle expiry with an
//! injected clock, roles, `renkei operators`), and in a real headless
//! Chromium driven over WebDriver (`dashboard_browser`).

use crate::common::{Backend, TestApp, spawn_app_at, spawn_app_with};
use chrono::Utc;
use renkei::config::Config;
use renkei_core::{Clock, ManualClock};
use renkei_store::{OperatorRole, OperatorStore};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;

pub(crate) const ADMIN_PASSWORD: &str = "admin-password-0123";
pub(crate) const VIEWER_PASSWORD: &str = "viewer-password-0123";
const EDITOR_PASSWORD: &str = "editor-password-0123";

renkei_test_support::on_both_backends!(
    renkei_test_support::available =>
    signing_in_sets_a_strict_cookie_and_every_post_needs_the_csrf_token,
    failed_sign_ins_are_limited_per_name_and_per_address,
    viewers_read_editors_pause_admins_manage_operators,
);

/// Adds an operator as a test fixture (recorded as by `test`).
pub(crate) async fn add_operator(app: &TestApp, name: &str, role: OperatorRole, password: &str) {
    let store: &dyn OperatorStore = app.store.as_ref();
    renkei_dashboard::manage::add(store, "test", name, role, password, Utc::now()).await.expect("add operator");
}

/// A browserless client: no redirects followed, cookies by hand.
pub(crate) struct Visitor {
    base: String,
    http: reqwest::Client,
    /// `renkei_session=…` once signed in.
    pub session: Option<String>,
}

pub(crate) struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    fn set_cookies(&self) -> Vec<&str> {
        self.headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).collect()
    }

    /// The `Set-Cookie` for cookie `name`.
    fn cookie(&self, name: &str) -> Option<&str> {
        self.set_cookies().into_iter().find(|c| c.starts_with(&format!("{name}=")))
    }

    fn location(&self) -> Option<&str> {
        self.headers.get("location").and_then(|v| v.to_str().ok())
    }
}

/// The value of the first hidden `csrf` field in a page.
pub(crate) fn csrf_in(html: &str) -> String {
    let start = html.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
    html[start..].split('"').next().expect("value").to_string()
}

impl Visitor {
    pub(crate) fn new(app: &TestApp) -> Self {
        let _ = renkei::http_client(); // installs the TLS provider reqwest needs
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Self { base: app.base.clone(), http, session: None }
    }

    async fn answer(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Answer { status, headers, body: response.text().await.expect("body") }
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.session {
            request = request.header("cookie", cookie);
        }
        Self::answer(request).await
    }

    pub(crate) async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> Answer {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(cookie) = &self.session {
            request = request.header("cookie", cookie);
        }
        Self::answer(request).await
    }

    /// Posts the sign-in form as a browser would (its CSRF cookie and field).
    async fn sign_in_answer(&self, name: &str, password: &str) -> Answer {
        let form = self.get("/dashboard/login").await;
        assert_eq!(form.status, 200, "{}", form.body);
        let cookie = form.cookie("renkei_login_csrf").expect("login csrf cookie");
        let pair = cookie.split(';').next().expect("pair").to_string();
        let body = format!("csrf={}&name={name}&password={password}", csrf_in(&form.body));
        let request = self
            .http
            .post(format!("{}/dashboard/login", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", pair)
            .body(body);
        Self::answer(request).await
    }

    /// Signs in; panics unless it works.
    pub(crate) async fn sign_in(&mut self, name: &str, password: &str) -> Answer {
        let answer = self.sign_in_answer(name, password).await;
        assert_eq!((answer.status, answer.location()), (303, Some("/dashboard/")), "{}", answer.body);
        let cookie = answer.cookie("renkei_session").expect("session cookie");
        self.session = Some(cookie.split(';').next().expect("pair").to_string());
        answer
    }

    /// The CSRF token of the signed-in session (from the overview's sign-out form).
    pub(crate) async fn csrf(&self) -> String {
        let page = self.get("/dashboard/").await;
        assert_eq!(page.status, 200, "{}", page.body);
        csrf_in(&page.body)
    }
}

async fn signing_in_sets_a_strict_cookie_and_every_post_needs_the_csrf_token(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else { return };
    add_operator(&app, "admin", OperatorRole::Admin, ADMIN_PASSWORD).await;
    let mut visitor = Visitor::new(&app);

    let page = visitor.get("/dashboard/").await;
    assert_eq!((page.status, page.location()), (303, Some("/dashboard/login")), "not signed in");
    let form = visitor.get("/dashboard/login").await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("サインイン"), "Japanese by default: {}", form.body);
    let cookie = form.cookie("renkei_login_csrf").expect("login csrf cookie");
    assert!(cookie.ends_with("; HttpOnly; SameSite=Strict; Path=/dashboard"), "{cookie}");
    for (header, value) in
        [("cache-control", "no-store"), ("x-frame-options", "DENY"), ("content-type", "text/html; charset=utf-8")]
    {
        assert_eq!(form.headers.get(header).and_then(|v| v.to_str().ok()), Some(value), "{header}");
    }
    let csp = form.headers.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");

    // A sign-in form posted without its CSRF cookie (another site's form) is refused.
    let forged = visitor
        .post("/dashboard/login", format!("csrf={}&name=admin&password={ADMIN_PASSWORD}", csrf_in(&form.body)))
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.body.contains("フォームの確認に失敗しました"), "{}", forged.body);
    assert!(forged.cookie("renkei_session").is_none());

    let wrong = visitor.sign_in_answer("admin", "not-the-password").await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.body.contains("名前またはパスワードが違います"), "{}", wrong.body);
    assert!(wrong.cookie("renkei_session").is_none());

    let signed = visitor.sign_in("admin", ADMIN_PASSWORD).await;
    let cookie = signed.cookie("renkei_session").expect("session cookie");
    let token = cookie.split(';').next().and_then(|p| p.strip_prefix("renkei_session=")).expect("token");
    assert_eq!(token.len(), 64, "{cookie}");
    assert!(cookie.ends_with("; HttpOnly; SameSite=Strict; Path=/dashboard"), "no Secure over http: {cookie}");
    let epoch = chrono::DateTime::UNIX_EPOCH;
    assert!(app.store.session(token, epoch).await.expect("read").is_none(), "the token itself is not stored");
    let stored = app.store.session(&renkei_dashboard::auth::token_hash(token), epoch).await.expect("read");
    assert_eq!(stored.expect("its hash is").operator, "admin");

    let overview = visitor.get("/dashboard/").await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    assert!(overview.body.contains("admin") && overview.body.contains("友だち"), "{}", overview.body);
    let csrf = csrf_in(&overview.body);

    // Posts without the session's token, with another token, or malformed: 4xx pages, nothing done.
    for body in [String::new(), "csrf=".to_string(), format!("csrf={}", renkei_dashboard::auth::random_token())] {
        let refused = visitor.post("/dashboard/logout", body.clone()).await;
        assert_eq!(refused.status, 403, "{body:?}: {}", refused.body);
        assert!(refused.body.contains("フォームの確認に失敗しました"), "{}", refused.body);
    }
    let garbage = visitor.post("/dashboard/campaigns/none/pause", b"\xff\xfe%%%=&&csrf".to_vec()).await;
    assert!([400, 403].contains(&garbage.status), "{}: {}", garbage.status, garbage.body);
    // Every POST route, with malformed, forged or foreign bodies: a 4xx page each, never a 5xx.
    let routes = [
        "/dashboard/login",
        "/dashboard/logout",
        "/dashboard/campaigns/none/pause",
        "/dashboard/campaigns/none/resume",
        "/dashboard/operators",
        "/dashboard/operators/admin/role",
        "/dashboard/operators/admin/remove",
    ];
    let bodies: [&[u8]; 6] =
        [b"", b"\xff\xfe\x00%%=&&=", b"csrf=%ZZ&role=%", b"{\"csrf\": 1}", b"csrf&csrf&csrf=&=", b"role=admin&name=x"];
    for route in routes {
        for body in bodies {
            let answer = visitor.post(route, body.to_vec()).await;
            assert!((400..500).contains(&answer.status), "{route} {body:?}: {} {}", answer.status, answer.body);
            assert!(answer.body.contains("<html"), "{route}: an HTML page");
        }
    }
    assert_eq!(app.store.operators().await.expect("operators").len(), 1, "nothing changed");
    let huge = visitor.post("/dashboard/logout", format!("csrf={csrf}&pad={}", "x".repeat(20_000))).await;
    assert_eq!(huge.status, 413, "over the dashboard's body limit");
    assert_eq!(visitor.get("/dashboard/").await.status, 200, "still signed in");

    let out = visitor.post("/dashboard/logout", format!("csrf={csrf}")).await;
    assert_eq!((out.status, out.location()), (303, Some("/dashboard/login")));
    assert!(out.cookie("renkei_session").expect("cleared").contains("Max-Age=0"));
    let after = visitor.get("/dashboard/").await;
    assert_eq!((after.status, after.location()), (303, Some("/dashboard/login")), "the session ended");

    let log = app.store.audit_log(10).await.expect("audit");
    let actions: Vec<(&str, &str)> = log.iter().map(|e| (e.operator.as_str(), e.action.as_str())).collect();
    assert_eq!(actions, [("admin", "sign_out"), ("admin", "sign_in"), ("test", "operator_add")]);
}

async fn failed_sign_ins_are_limited_per_name_and_per_address(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.dashboard.sign_in_max_failures = 3).await else { return };
    add_operator(&app, "admin", OperatorRole::Admin, ADMIN_PASSWORD).await;
    add_operator(&app, "sato", OperatorRole::Viewer, VIEWER_PASSWORD).await;
    let mut visitor = Visitor::new(&app);
    for _ in 0..3 {
        assert_eq!(visitor.sign_in_answer("admin", "wrong-password-1").await.status, 401);
    }
    let refused = visitor.sign_in_answer("admin", ADMIN_PASSWORD).await;
    assert_eq!(refused.status, 429, "the right password too, once limited: {}", refused.body);
    assert_eq!(refused.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("900"));
    assert!(refused.body.contains("しばらくサインインできません"), "{}", refused.body);
    assert!(refused.cookie("renkei_session").is_none());
    let same_address = visitor.sign_in_answer("sato", VIEWER_PASSWORD).await;
    assert_eq!(same_address.status, 429, "the address is limited as well");

    // With the address's failures gone (another address), the name's limit still holds, for that name only.
    app.store.clear_sign_in_failures("addr:127.0.0.1").await.expect("clear");
    assert_eq!(visitor.sign_in_answer("admin", ADMIN_PASSWORD).await.status, 429, "the name is limited");
    visitor.sign_in("sato", VIEWER_PASSWORD).await;
}

async fn viewers_read_editors_pause_admins_manage_operators(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else { return };
    add_operator(&app, "admin", OperatorRole::Admin, ADMIN_PASSWORD).await;
    add_operator(&app, "viewer", OperatorRole::Viewer, VIEWER_PASSWORD).await;
    add_operator(&app, "editor", OperatorRole::Editor, EDITOR_PASSWORD).await;
    let mut viewer = Visitor::new(&app);
    viewer.sign_in("viewer", VIEWER_PASSWORD).await;
    let csrf = viewer.csrf().await;
    assert_eq!(viewer.get("/dashboard/campaigns").await.status, 200, "viewers read");
    let pause = viewer.post("/dashboard/campaigns/none/pause", format!("csrf={csrf}")).await;
    assert_eq!(pause.status, 403, "viewers may not pause: {}", pause.body);
    assert!(pause.body.contains("この操作の権限がありません"), "{}", pause.body);
    assert_eq!(viewer.get("/dashboard/operators").await.status, 403);
    let add = viewer.post("/dashboard/operators", format!("csrf={csrf}&name=mallory&role=admin")).await;
    assert_eq!(add.status, 403, "viewers may not add operators");

    let mut editor = Visitor::new(&app);
    editor.sign_in("editor", EDITOR_PASSWORD).await;
    let csrf = editor.csrf().await;
    let unknown = editor.post("/dashboard/campaigns/none/pause", format!("csrf={csrf}")).await;
    assert_eq!(unknown.status, 404, "editors may pause, but there is no such campaign");
    assert_eq!(editor.get("/dashboard/operators").await.status, 403, "editors do not manage operators");

    let mut admin = Visitor::new(&app);
    admin.sign_in("admin", ADMIN_PASSWORD).await;
    let csrf = admin.csrf().await;
    let added = admin.post("/dashboard/operators", format!("csrf={csrf}&name=sato&role=editor&password=")).await;
    assert_eq!(added.status, 200, "{}", added.body);
    let generated = added.body.split("id=\"generated-password\">").nth(1).and_then(|s| s.split('<').next());
    let generated = generated.expect("a generated password, shown once").to_string();
    Visitor::new(&app).sign_in("sato", &generated).await;
    let taken = admin.post("/dashboard/operators", format!("csrf={csrf}&name=sato&role=viewer&password=")).await;
    assert_eq!(taken.status, 409, "{}", taken.body);
    let bad = admin.post("/dashboard/operators", format!("csrf={csrf}&name=%3Cb%3E&role=viewer")).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let bad_role = admin.post("/dashboard/operators/sato/role", format!("csrf={csrf}&role=owner")).await;
    assert_eq!(bad_role.status, 400);

    // A role change applies to a live session at its next request.
    let demoted = admin.post("/dashboard/operators/viewer/role", format!("csrf={csrf}&role=editor")).await;
    assert_eq!(demoted.status, 200);
    let csrf_viewer = viewer.csrf().await;
    assert_eq!(viewer.post("/dashboard/campaigns/none/pause", format!("csrf={csrf_viewer}")).await.status, 404);
    let removed = admin.post("/dashboard/operators/viewer/remove", format!("csrf={csrf}")).await;
    assert_eq!(removed.status, 200);
    assert_eq!(viewer.get("/dashboard/").await.status, 303, "a removed operator's session ends");
    let page = admin.get("/dashboard/operators").await;
    for action in ["operator_add", "operator_role", "operator_remove", "sign_in"] {
        assert!(page.body.contains(&format!("data-action=\"{action}\"")), "{action} in the audit log");
    }
}

#[tokio::test]
async fn sessions_expire_after_the_idle_time_and_are_kept_by_use() {
    let start = Utc::now();
    let clock = ManualClock::new(start);
    let store = renkei_test_support::sqlite().await.expect("sqlite");
    let app = spawn_app_at(store, Arc::new(clock.clone()) as Arc<dyn Clock>, |c: &mut Config| {
        c.dashboard.session_idle = "30m".parse().expect("duration");
    })
    .await;
    add_operator(&app, "admin", OperatorRole::Admin, ADMIN_PASSWORD).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("admin", ADMIN_PASSWORD).await;
    clock.advance(chrono::Duration::minutes(20));
    assert_eq!(visitor.get("/dashboard/").await.status, 200, "20 min idle");
    clock.advance(chrono::Duration::minutes(25));
    assert_eq!(visitor.get("/dashboard/").await.status, 200, "25 min since the last use, 45 since sign-in");
    clock.advance(chrono::Duration::minutes(31));
    let expired = visitor.get("/dashboard/").await;
    assert_eq!((expired.status, expired.location()), (303, Some("/dashboard/login")), "31 min idle");
}

#[tokio::test]
async fn cookies_are_secure_over_https_and_english_is_available() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.server.public_base_url = "https://crm.example.jp".to_string();
        c.dashboard.language = renkei::config::DashboardLanguage::En;
    })
    .await
    .expect("sqlite app");
    add_operator(&app, "admin", OperatorRole::Admin, ADMIN_PASSWORD).await;
    let mut visitor = Visitor::new(&app);
    let form = visitor.get("/dashboard/login").await;
    assert!(form.cookie("renkei_login_csrf").expect("cookie").ends_with("; Secure"));
    assert!(form.body.contains("Sign in") && form.body.contains("<html lang=\"en\">"), "{}", form.body);
    let signed = visitor.sign_in("admin", ADMIN_PASSWORD).await;
    let cookie = signed.cookie("renkei_session").expect("session");
    assert!(cookie.ends_with("; HttpOnly; SameSite=Strict; Path=/dashboard; Secure"), "{cookie}");
    let overview = visitor.get("/dashboard/").await;
    assert!(overview.body.contains("Friends") && !overview.body.contains("友だち"), "{}", overview.body);
}

fn renkei_operators(db_url: &str, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_renkei"))
        .arg("operators")
        .args(args)
        .env("RENKEI_DATABASE__URL", db_url)
        .env("RENKEI_LOG__LEVEL", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run renkei");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("output")
}

#[tokio::test]
async fn the_operators_command_adds_lists_changes_and_removes_with_an_audit_trail() {
    let test = renkei_test_support::sqlite().await.expect("sqlite");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).to_string();
    let added = renkei_operators(&test.url, &["add", "admin", "--role", "admin"], "piped-password-1\n");
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert_eq!(text(&added.stdout), "operator admin added (admin)\n", "a given password is not printed");
    let (_, hash) = test.store.operator_with_hash("admin").await.expect("read").expect("added");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(renkei_dashboard::auth::verify_password("piped-password-1", &hash));

    let generated = renkei_operators(&test.url, &["add", "sato", "--role", "viewer"], "");
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let out = text(&generated.stdout);
    let password = out.trim().rsplit(' ').next().expect("password");
    assert!(out.starts_with("operator sato added (viewer); password (shown once): "), "{out}");
    let (_, hash) = test.store.operator_with_hash("sato").await.expect("read").expect("added");
    assert!(renkei_dashboard::auth::verify_password(password, &hash), "the printed password is the one stored");

    let short = renkei_operators(&test.url, &["add", "kato", "--role", "editor"], "short\n");
    assert!(!short.status.success());
    assert!(text(&short.stderr).contains("a password has 10 to 1024 characters"), "{}", text(&short.stderr));
    let role = renkei_operators(&test.url, &["set-role", "sato", "editor"], "");
    assert!(role.status.success(), "{}", text(&role.stderr));
    let list = renkei_operators(&test.url, &["list"], "");
    assert_eq!(text(&list.stdout), "admin\tadmin\nsato\teditor\n");
    let missing = renkei_operators(&test.url, &["remove", "nobody"], "");
    assert!(!missing.status.success() && text(&missing.stderr).contains("no operator `nobody`"));
    assert!(renkei_operators(&test.url, &["remove", "sato"], "").status.success());
    let log = test.store.audit_log(10).await.expect("audit");
    let entries: Vec<(&str, &str, &str)> =
        log.iter().map(|e| (e.operator.as_str(), e.action.as_str(), e.target.as_str())).collect();
    assert_eq!(
        entries,
        [
            ("cli", "operator_remove", "sato"),
            ("cli", "operator_role", "sato"),
            ("cli", "operator_add", "sato"),
            ("cli", "operator_add", "admin"),
        ]
    );
}
