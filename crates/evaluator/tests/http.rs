//! `GET /v1/segments` and `GET /v1/segments/{id}/members`.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{fixture, t0, user};
use http_body_util::BodyExt;
use renkei_core::{LinkMethod, MemberId};
use serde_json::{Value, json};
use tower::ServiceExt;

const LINKED: &str = "id: linked\nname: 連携済み\nrule:\n  linked: true\n";
const NOBODY: &str = "id: nobody\nname: Nobody\nrule:\n  any: []\n";

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, Value) {
    let response =
        app.clone().oneshot(Request::get(uri).body(Body::empty()).expect("request")).await.expect("response");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).expect("json body"))
}

#[tokio::test]
async fn segments_list_sizes_and_paged_members() {
    let f = fixture(&[LINKED, NOBODY]).await;
    for n in [3u8, 1, 2] {
        let member = MemberId::parse(&format!("m{n}")).expect("member");
        f.test.store.link(&member, &user(n), LinkMethod::Api, t0()).await.expect("link");
    }
    f.engine.recompute_all(|_| {}).await.expect("recompute");
    let app = renkei_api::segments::router(f.engine.clone());

    let (status, body) = get(&app, "/v1/segments").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"segments": [
            {"id": "linked", "name": "連携済み", "size": 3, "updated_at": "2026-03-01T00:00:00Z"},
            {"id": "nobody", "name": "Nobody", "size": 0, "updated_at": null},
        ]})
    );

    let (status, body) = get(&app, "/v1/segments/linked/members?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"segment": "linked", "line_user_ids": [user(1), user(2)], "next_after": user(2)}));
    let (_, body) = get(&app, &format!("/v1/segments/linked/members?limit=2&after={}", user(2))).await;
    assert_eq!(body, json!({"segment": "linked", "line_user_ids": [user(3)], "next_after": null}));
    let (_, body) = get(&app, "/v1/segments/nobody/members").await;
    assert_eq!(body, json!({"segment": "nobody", "line_user_ids": [], "next_after": null}));
}

#[tokio::test]
async fn unknown_segments_and_bad_limits_are_json_errors() {
    let f = fixture(&[LINKED]).await;
    let app = renkei_api::segments::router(f.engine.clone());
    let (status, body) = get(&app, "/v1/segments/nope/members").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("nope")));
    for bad in ["0", "-1", "abc", "10001", ""] {
        let (status, body) = get(&app, &format!("/v1/segments/linked/members?limit={bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "limit={bad}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
}
