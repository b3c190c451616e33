//! The dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `.ci/run` installs), driven over WebDriver: sign
//! in (a wrong password first), walk every page (overview, deliveries, segments,
//! a segment, ID連携, the member look-up, campaigns, a campaign, operators), compare the numbers shown
//! (and today's row of each 30-day trend beside its chart) with the API's for the same data, preview
//! a segment and dry-run a campaign, pause and resume a campaign through
//! its form, see a forged post and a viewer refused, sign out; a
//! screenshot of each page goes to `target/dashboard-screenshots/`.
//!
//! With `CI=true` a missing chromedriver fails the test; elsewhere it is
//! skipped with a loud message.

use crate::campaigns_api::{USER_1, buy, eventually, files, scheduler_started, spawn, state_of, stats};
use crate::common::{Backend, TestApp};
use crate::dashboard::{ADMIN_PASSWORD, VIEWER_PASSWORD, Visitor, add_operator, csrf_in};
use fantoccini::{Client, ClientBuilder, Locator};
use renkei_store::OperatorRole;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free port, stopped (with its browsers) when dropped.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// `None` when chromedriver is not installed and this is not CI.
    async fn start() -> Option<Driver> {
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.to_string());
        if !Path::new(&binary).exists() {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "{binary} is missing: install Debian's chromium and chromium-driver (.ci/run does)");
            eprintln!(
                "\n!!!!!!!! SKIPPED the dashboard browser test: {binary} is missing \
                 (apt-get install chromium chromium-driver); with CI=true this fails !!!!!!!!\n"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _profile: tempfile::tempdir().expect("profile dir"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(driver)
    }

    async fn browser(&self) -> Client {
        let profile = format!("--user-data-dir={}", self._profile.path().display());
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
            profile.as_str(),
        ];
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_string());
        let capabilities = json!({"goog:chromeOptions": {"binary": binary, "args": args}});
        let Value::Object(capabilities) = capabilities else { unreachable!("an object") };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshots().join(format!("{name}.png")), png).expect("save screenshot");
}

async fn wait_for(browser: &Client, css: &str) -> fantoccini::elements::Element {
    browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css(css)).await.expect(css)
}

/// The `data-value` of the element `css` (found again if a navigation replaced it meanwhile).
async fn value_of(browser: &Client, css: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match wait_for(browser, css).await.attr("data-value").await {
            Ok(value) => return value.unwrap_or_else(|| panic!("{css} has no data-value")),
            Err(error) => assert!(Instant::now() < deadline, "{css}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sign_in(browser: &Client, app: &TestApp, name: &str, password: &str) {
    browser.goto(&format!("{}/dashboard/login", app.base)).await.expect("login page");
    wait_for(browser, "#name").await.send_keys(name).await.expect("name");
    wait_for(browser, "#password").await.send_keys(password).await.expect("password");
    wait_for(browser, "#sign-in").await.click().await.expect("submit");
}

/// How many series the chart `css` draws.
async fn chart_lines(browser: &Client, css: &str) -> usize {
    wait_for(browser, css).await;
    browser.find_all(Locator::Css(&format!("{css} polyline"))).await.expect("lines").len()
}

/// The date of a trend table's newest row (today in the dashboard's timezone).
async fn newest_date(browser: &Client, table: &str) -> String {
    let row = wait_for(browser, &format!("{table} tr[data-date]")).await;
    row.attr("data-date").await.expect("attr").expect("a date")
}

/// The sum of the `data-value`s of the cells `css`.
async fn column_sum(browser: &Client, css: &str) -> i64 {
    let mut sum = 0;
    for cell in browser.find_all(Locator::Css(css)).await.expect("cells") {
        let value = cell.attr("data-value").await.expect("attr").expect("a data-value");
        sum += value.parse::<i64>().expect("a number");
    }
    sum
}

/// Waits until `#state` shows `state`.
async fn shown_state(browser: &Client, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while value_of(browser, "#state").await != state {
        assert!(Instant::now() < deadline, "the page never showed {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_dashboard_in_a_real_browser() {
    let Some(driver) = Driver::start().await else { return };
    let files = files();
    let (app, _sim) = spawn(Backend::Sqlite, &files).await.expect("sqlite app");
    scheduler_started(&app).await;
    buy(&app, "m1", USER_1).await;
    let api = eventually("the send to be recorded", async || {
        let body = stats(&app, "thanks").await;
        (body["sent"] == 1).then_some(body)
    })
    .await;
    add_operator(&app, "admin", OperatorRole::Admin, ADMIN_PASSWORD).await;
    add_operator(&app, "viewer", OperatorRole::Viewer, VIEWER_PASSWORD).await;
    // The dispatcher's quota guard shares what LINE (the simulator) reported.
    let (quota, _) = eventually("the quota guard to read LINE's quota", async || {
        app.store.mark(renkei_dispatcher::QUOTA_MARK).await.ok().flatten()
    })
    .await;
    let (limit, used) = renkei_dispatcher::parse_quota_mark(&quota).expect("a quota mark");
    let browser = driver.browser().await;

    // A wrong password is refused on the page.
    sign_in(&browser, &app, "admin", "not-the-password").await;
    let error = wait_for(&browser, "#error").await.text().await.expect("text");
    assert!(error.contains("名前またはパスワードが違います"), "{error}");
    screenshot(&browser, "login-refused").await;

    // Overview: the link made through POST /v1/links, nothing failed.
    sign_in(&browser, &app, "admin", ADMIN_PASSWORD).await;
    assert_eq!(value_of(&browser, "#linked").await, "1");
    assert_eq!(value_of(&browser, "#following").await, "1", "linked, no unfollow seen: a friend");
    assert_eq!(wait_for(&browser, "#link-rate").await.text().await.expect("text"), "100.0%");
    let (status, _) = app.get("/v1/links/m1").await;
    assert_eq!(status, 200, "the API has the one link");
    // Deliveries waiting and failed: the sums of every campaign's stats.
    let (_, listed) = app.get("/v1/campaigns").await;
    let (mut pending, mut failed) = (0, 0);
    for campaign in listed["campaigns"].as_array().expect("campaigns") {
        let body = stats(&app, campaign["id"].as_str().expect("id")).await;
        pending += body["pending"].as_u64().expect("pending");
        failed += body["failed"].as_u64().expect("failed");
    }
    assert_eq!(value_of(&browser, "#deliveries-pending").await, pending.to_string());
    assert_eq!(value_of(&browser, "#deliveries-failed").await, failed.to_string());
    assert_eq!(value_of(&browser, "#quota-used").await, used.to_string(), "this month's count as LINE reported it");
    match limit {
        Some(limit) => assert_eq!(value_of(&browser, "#quota-limit").await, limit.to_string()),
        None => wait_for(&browser, "#quota-limit").await.text().await.map(|t| assert_eq!(t, "上限なし")).expect("text"),
    }
    let holding = limit.is_some_and(|limit| used >= limit);
    assert_eq!(value_of(&browser, "#quota-guard").await, if holding { "holding" } else { "open" }, "the guard's state");
    let database = wait_for(&browser, "#database").await.text().await.expect("text");
    assert_eq!(database, "正常");
    // The last 30 days: charts, and today's row of the numbers beside them equals the counts now.
    assert_eq!(chart_lines(&browser, "#friends-chart").await, 3, "friends, blocked, linked");
    assert_eq!(chart_lines(&browser, "#rate-chart").await, 1);
    let today = newest_date(&browser, "#trend").await;
    assert_eq!(browser.find_all(Locator::Css("#trend tr[data-date]")).await.expect("rows").len(), 30);
    assert_eq!(value_of(&browser, &format!("#trend-friends-{today}")).await, value_of(&browser, "#following").await);
    assert_eq!(value_of(&browser, &format!("#trend-linked-{today}")).await, "1");
    assert_eq!(value_of(&browser, &format!("#trend-blocked-{today}")).await, "0");
    assert_eq!(value_of(&browser, &format!("#trend-rate-{today}")).await, "100.0");
    screenshot(&browser, "overview").await;

    // Deliveries: the same totals, what waits per campaign, no failed request.
    browser.goto(&format!("{}/dashboard/deliveries", app.base)).await.expect("deliveries");
    assert_eq!(value_of(&browser, "#deliveries-pending").await, pending.to_string());
    assert_eq!(value_of(&browser, "#deliveries-failed").await, failed.to_string());
    let waiting = browser.find_all(Locator::Css("#waiting tr[data-campaign]")).await.expect("rows");
    assert_eq!(pending, 0, "the one send is made and nothing else is due");
    assert!(waiting.is_empty(), "nothing waits in the queue");
    assert!(browser.find_all(Locator::Css("#failures tr[data-request]")).await.expect("rows").is_empty());
    screenshot(&browser, "deliveries").await;

    // Segments: each with the size GET /v1/segments gives; one segment's members as the API pages them.
    browser.goto(&format!("{}/dashboard/segments", app.base)).await.expect("segments");
    wait_for(&browser, "#segments").await;
    let (_, listed) = app.get("/v1/segments").await;
    let listed = listed["segments"].as_array().expect("segments").clone();
    let rows = browser.find_all(Locator::Css("tr[data-segment]")).await.expect("rows");
    assert_eq!(rows.len(), listed.len());
    for segment in &listed {
        let css = format!("tr[data-segment=\"{}\"] .size", segment["id"].as_str().expect("id"));
        assert_eq!(value_of(&browser, &css).await, segment["size"].to_string(), "{segment}");
    }
    screenshot(&browser, "segments").await;
    browser.goto(&format!("{}/dashboard/segments/buyers", app.base)).await.expect("segment");
    let (_, members) = app.get("/v1/segments/buyers/members").await;
    assert_eq!(value_of(&browser, "#size").await, members["line_user_ids"].as_array().expect("ids").len().to_string());
    let shown = browser.find_all(Locator::Css("#members tr[data-user]")).await.expect("rows");
    let mut users = Vec::new();
    for row in &shown {
        users.push(row.attr("data-user").await.expect("attr").expect("user"));
    }
    assert_eq!(users, [USER_1], "the API lists {members}");
    // Each with its member (ID連携) and friendship, as GET /v1/links/m1 and the overview have them.
    let member = wait_for(&browser, "#members tr[data-user] td.member").await.text().await.expect("text");
    assert_eq!(member, "m1");
    assert_eq!(value_of(&browser, "#members tr[data-user] td.linked").await, "true");
    assert_eq!(value_of(&browser, "#members tr[data-user] td.following").await, "true", "linked, no unfollow seen");
    let definition = wait_for(&browser, "pre.definition").await.text().await.expect("text");
    assert!(definition.contains("event: purchase"), "{definition}");
    // Its size over time: today's is the size now; the entries counted are the transitions'.
    assert_eq!(chart_lines(&browser, "#size-chart").await, 1);
    let today = newest_date(&browser, "#size-trend").await;
    let api_size = members["line_user_ids"].as_array().expect("ids").len();
    assert_eq!(value_of(&browser, &format!("#size-trend-size-{today}")).await, api_size.to_string());
    assert_eq!(column_sum(&browser, "#size-trend td[id^=\"size-trend-entered-\"]").await, 1, "one entry");
    screenshot(&browser, "segment").await;
    // A preview now, through the form: the segment's members as the API lists them.
    wait_for(&browser, "#preview").await.click().await.expect("preview");
    assert_eq!(value_of(&browser, "#preview-size").await, api_size.to_string());
    let previewed = wait_for(&browser, "#preview-members").await.text().await.expect("text");
    assert_eq!(previewed.trim(), USER_1);
    screenshot(&browser, "segment-preview").await;

    // Member look-up through the search form: the link as GET /v1/links/m1 has it, the segments it is in.
    browser.goto(&format!("{}/dashboard/members", app.base)).await.expect("members");
    wait_for(&browser, "#q").await.send_keys("m1").await.expect("type");
    wait_for(&browser, "#search").await.click().await.expect("search");
    let (_, link) = app.get("/v1/links/m1").await;
    assert_eq!(value_of(&browser, "#link").await, link["method"].as_str().expect("method"));
    let line_user = wait_for(&browser, "#line-user-id").await.text().await.expect("text");
    assert_eq!(line_user, link["line_user_id"].as_str().expect("line user"));
    assert_eq!(value_of(&browser, "#friendship").await, "true", "linked, no unfollow seen");
    let current = wait_for(&browser, "#current-segments").await.text().await.expect("text");
    assert_eq!(current.trim(), "buyers");
    let sent = browser.find_all(Locator::Css("#messages tr[data-status=\"sent\"]")).await.expect("rows");
    assert_eq!(sent.len(), 1, "the thank-you message, sent");
    let purchases = browser.find_all(Locator::Css("#events tr[data-type=\"purchase\"]")).await.expect("rows");
    assert_eq!(purchases.len(), 1, "the purchase event");
    screenshot(&browser, "member").await;
    browser.goto(&format!("{}/dashboard/members?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", app.base)).await.expect("go");
    wait_for(&browser, "#not-found").await;
    let typed = wait_for(&browser, "#q").await.prop("value").await.expect("value");
    assert_eq!(typed.as_deref(), Some("<script>alert(1)</script>"), "shown as text, escaped");

    // ID連携: links by method as the API has them; an account-link attempt just begun is open.
    let (status, body) =
        app.post("/v1/account-link/nonce", &json!({"member_id": "m2", "link_token": "link-token-1"})).await;
    assert_eq!(status, 200, "{body}");
    browser.goto(&format!("{}/dashboard/links", app.base)).await.expect("links");
    let (_, link) = app.get("/v1/links/m1").await;
    assert_eq!(link["method"], "api");
    assert_eq!(value_of(&browser, "#method-api").await, "1");
    assert_eq!(value_of(&browser, "#nonces-open").await, "1");
    assert_eq!(value_of(&browser, "#nonces-total").await, "1");
    // Over time: the nonce issued just now is today's; the link made through the API too.
    assert_eq!(chart_lines(&browser, "#links-chart").await, 6);
    let today = newest_date(&browser, "#links-trend").await;
    assert_eq!(value_of(&browser, &format!("#links-trend-nonces-{today}")).await, "1");
    assert_eq!(value_of(&browser, &format!("#links-trend-links-{today}")).await, "1", "{link}");
    assert_eq!(column_sum(&browser, "#links-trend td[id^=\"links-trend-unlinks-\"]").await, 0);
    screenshot(&browser, "links").await;

    // Campaigns: every configured campaign with its state, as GET /v1/campaigns lists them.
    browser.goto(&format!("{}/dashboard/campaigns", app.base)).await.expect("campaigns");
    wait_for(&browser, "#campaigns").await;
    let rows = browser.find_all(Locator::Css("tr[data-campaign]")).await.expect("rows");
    let (_, listed) = app.get("/v1/campaigns").await;
    assert_eq!(rows.len(), listed["campaigns"].as_array().expect("campaigns").len());
    for row in rows {
        let id = row.attr("data-campaign").await.expect("attr").expect("id");
        let state = row.find(Locator::Css(".state")).await.expect("state").attr("data-value").await.expect("attr");
        assert_eq!(Value::from(state.expect("state")), state_of(&app, &id).await, "{id}");
    }
    screenshot(&browser, "campaigns").await;

    // One campaign: the numbers are the API's stats.
    browser.goto(&format!("{}/dashboard/campaigns/thanks", app.base)).await.expect("campaign");
    for (css, key) in [
        ("#sent", "sent"),
        ("#pending", "pending"),
        ("#failed", "failed"),
        ("#skipped", "skipped"),
        ("#clicked", "clicked"),
        ("#clicked-users", "clicked_users"),
    ] {
        assert_eq!(value_of(&browser, css).await, api[key].to_string(), "{css} against the API's {key}");
    }
    assert_eq!(value_of(&browser, "#sent").await, "1");
    let sent_text = wait_for(&browser, "#sent").await.text().await.expect("text");
    assert_eq!(sent_text, "1件", "Japanese counts");
    shown_state(&browser, "active").await;
    // Sends per day: a bar a day, together the API's sent.
    assert_eq!(browser.find_all(Locator::Css("#sends-chart rect.bar")).await.expect("bars").len(), 30);
    assert_eq!(column_sum(&browser, "#sends td[id^=\"sends-sent-\"]").await, api["sent"].as_i64().expect("sent"));
    screenshot(&browser, "campaign").await;

    // A dry run now, through the form: the segment's members, each with a decision.
    wait_for(&browser, "#dry-run").await.click().await.expect("dry run");
    assert_eq!(
        value_of(&browser, "#dry-run-total").await,
        members["line_user_ids"].as_array().expect("ids").len().to_string()
    );
    assert_eq!(column_sum(&browser, "#decisions td.num").await, 1, "every recipient decided once");
    let rows = browser.find_all(Locator::Css("#dry-run-rows tr[data-decision]")).await.expect("rows");
    assert_eq!(rows.len(), 1);
    screenshot(&browser, "campaign-dry-run").await;
    browser.goto(&format!("{}/dashboard/campaigns/thanks", app.base)).await.expect("campaign");

    // Pause and resume through the form; the API sees each.
    wait_for(&browser, "#toggle").await.click().await.expect("pause");
    shown_state(&browser, "paused").await;
    assert_eq!(state_of(&app, "thanks").await, "paused");
    screenshot(&browser, "campaign-paused").await;
    wait_for(&browser, "#toggle").await.click().await.expect("resume");
    shown_state(&browser, "active").await;
    assert_eq!(state_of(&app, "thanks").await, "active");

    // A forged post with the browser's own session but without the form's token: refused, nothing changes.
    let cookie = browser.get_named_cookie("renkei_session").await.expect("the session cookie");
    let mut forger = Visitor::new(&app);
    forger.session = Some(format!("renkei_session={}", cookie.value()));
    let forged = forger.post("/dashboard/campaigns/thanks/pause", "").await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    for path in ["/dashboard/segments/buyers/preview", "/dashboard/campaigns/thanks/dry-run"] {
        let forged = forger.post(path, "at=").await;
        assert_eq!(forged.status, 403, "{path} without the form's token: {}", forged.body);
    }
    assert_eq!(state_of(&app, "thanks").await, "active");

    // Operators and the audit log.
    browser.goto(&format!("{}/dashboard/operators", app.base)).await.expect("operators");
    wait_for(&browser, "#audit").await;
    for action in ["pause", "resume", "sign_in", "preview", "dry_run"] {
        let entries = browser.find_all(Locator::Css(&format!("#audit tr[data-action=\"{action}\"]"))).await;
        assert!(!entries.expect("rows").is_empty(), "{action} is in the audit log");
    }
    let listed = browser.find_all(Locator::Css("tr[data-operator]")).await.expect("operators");
    assert_eq!(listed.len(), 2, "admin and viewer");
    screenshot(&browser, "operators").await;

    // Sign out, then the viewer: reads, has no pause form, and is refused the operators page.
    wait_for(&browser, "form.signout button").await.click().await.expect("sign out");
    wait_for(&browser, "#sign-in").await;
    sign_in(&browser, &app, "viewer", VIEWER_PASSWORD).await;
    wait_for(&browser, "#linked").await;
    browser.goto(&format!("{}/dashboard/campaigns/thanks", app.base)).await.expect("campaign");
    assert_eq!(value_of(&browser, "#sent").await, "1");
    assert!(browser.find(Locator::Css("#toggle")).await.is_err(), "no pause form for viewers");
    assert!(browser.find(Locator::Css("#dry-run")).await.is_err(), "no dry-run form for viewers");
    let note = wait_for(&browser, "#editors-only").await.text().await.expect("text");
    assert!(note.contains("編集者と管理者だけ"), "{note}");
    screenshot(&browser, "campaign-viewer").await;
    browser.goto(&format!("{}/dashboard/operators", app.base)).await.expect("operators");
    let refused = wait_for(&browser, "#error").await.text().await.expect("text");
    assert!(refused.contains("権限がありません"), "{refused}");
    screenshot(&browser, "operators-viewer-refused").await;
    let cookie = browser.get_named_cookie("renkei_session").await.expect("the viewer's session cookie");
    let mut viewer = Visitor::new(&app);
    viewer.session = Some(format!("renkei_session={}", cookie.value()));
    assert_eq!(viewer.get("/dashboard/operators").await.status, 403);
    let csrf = csrf_in(&viewer.get("/dashboard/").await.body);
    let pause = viewer.post("/dashboard/campaigns/thanks/pause", format!("csrf={csrf}")).await;
    assert_eq!(pause.status, 403, "the viewer's pause form post, with a valid token: {}", pause.body);
    for path in ["/dashboard/segments/buyers/preview", "/dashboard/campaigns/thanks/dry-run"] {
        let refused = viewer.post(path, format!("csrf={csrf}")).await;
        assert_eq!(refused.status, 403, "{path}: {}", refused.body);
        assert!(refused.body.contains("権限がありません"), "the page says why: {}", refused.body);
    }
    assert_eq!(state_of(&app, "thanks").await, "active");
    browser.close().await.expect("close the browser");
}
