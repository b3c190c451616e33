//! The shipped examples (config/campaigns, templates, config/rich_menus.yaml)
//! load against the shipped segments and render.
#![allow(clippy::unwrap_used)]

mod common;

use chrono::{DateTime, Utc};
use common::{config_dir, shipped_segments, templates_dir};
use renkei_campaigns::{CampaignSet, LinkKeys, RenderContext, RichMenuRules, Timing, Trigger};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

const LINK_KEY: &str = "examples-test-link-key-0123456789abcdef";

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

fn shipped() -> CampaignSet {
    let segments = shipped_segments();
    match CampaignSet::load(&config_dir().join("campaigns"), &templates_dir(), &segments) {
        Ok(set) => set.with_link_keys(Arc::new(LinkKeys::new(&[LINK_KEY]).unwrap())),
        Err(errors) => panic!("{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")),
    }
}

#[test]
fn shipped_campaigns_load() {
    let set = shipped();
    let ids: Vec<&str> = set.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "birthday_coupon",
            "cart_reminder",
            "gold_members_news",
            "gold_welcome",
            "link_promotion",
            "order_shipped",
            "reservation_reminder",
            "restock_notice",
            "trial_followup"
        ]
    );
    let cart = set.get("cart_reminder").unwrap();
    assert_eq!(cart.trigger, Trigger::SegmentEntered { segment: "cart_abandoners".into() });
    assert!(cart.quiet_hours.is_some() && cart.frequency_cap.is_some());
    let Trigger::Event { timing, unless, .. } = &set.get("reservation_reminder").unwrap().trigger else {
        panic!("event trigger")
    };
    assert_eq!(timing, &Timing::At { property: "reserved_at".into(), offset: chrono::Duration::days(-1) });
    assert_eq!(unless.as_ref().unwrap().match_props, vec!["reservation_id".to_string()]);
    let Trigger::Schedule { expr, audience, .. } = &set.get("birthday_coupon").unwrap().trigger else {
        panic!("schedule trigger")
    };
    assert_eq!((expr.as_str(), audience.as_str()), ("0 0 9 * * *", "birthday_today"));
    assert!(
        matches!(&set.get("gold_members_news").unwrap().trigger, Trigger::Schedule { audience, .. } if audience == "gold_members")
    );
    let trial = set.get("trial_followup").unwrap();
    let steps: Vec<&str> = trial.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(steps, ["thanks", "day3", "day7"]);
    assert_eq!(trial.steps[2].variants.len(), 2);
    assert_eq!(trial.holdout.unwrap().basis_points, 1_000);
    assert!(trial.exit.as_ref().unwrap().goal && cart.goal.is_some());
}

#[test]
fn shipped_rich_menus_load() {
    let rules = RichMenuRules::load(&config_dir().join("rich_menus.yaml"), &shipped_segments()).unwrap();
    assert_eq!(rules.rules[0].segment, "gold_members");
    assert!(rules.default.is_some());
    let gold: BTreeSet<String> = ["gold_members".to_string(), "unlinked_followers".to_string()].into();
    assert_eq!(rules.menu_for(&gold), Some(rules.rules[0].rich_menu.as_str()));
    assert_eq!(rules.menu_for(&BTreeSet::new()), rules.default.as_deref());
}

fn member() -> Map<String, Value> {
    json!({"name": "渡辺 美咲", "rank": "gold", "birthday": "1963-02-27"}).as_object().unwrap().clone()
}

#[test]
fn every_shipped_campaign_renders_for_a_typical_member() {
    let set = shipped();
    let member = member();
    let event = json!({"type": "reservation_created", "occurred_at": "2026-08-01T13:13:20+09:00",
        "properties": {"reservation_id": "R002197", "reserved_at": "2026-08-12T13:13:20+09:00", "store": "umeda"}});
    for campaign in set.iter() {
        let ctx = RenderContext {
            member_id: Some("M00001"),
            member: Some(&member),
            line_user_id: Some("U7db3d96b0f76480d94a7ded5f234fb96"),
            trigger_key: Some("entered:1"),
            event: matches!(campaign.trigger, Trigger::Event { .. }).then_some(&event),
            now: utc("2026-08-01T00:00:00Z"),
            timezone: chrono_tz::Asia::Tokyo,
            public_base_url: "https://renkei.example/",
        };
        // Every step of a sequence renders (each variant's turn comes by user).
        for step in 0..campaign.steps.len().max(1) {
            let messages = set
                .render_step(campaign, (!campaign.steps.is_empty()).then_some(step), &ctx)
                .unwrap_or_else(|e| panic!("{} step {step}: {e}", campaign.id));
            assert_eq!(messages[0]["type"], "flex", "{}", campaign.id);
        }
        let messages = set.render(campaign, &ctx).unwrap_or_else(|e| panic!("{}: {e}", campaign.id));
        let (_, first) = campaign.message_range(campaign.steps.first().map(|_| 0), ctx.line_user_id);
        assert_eq!(messages.len(), first.len());
        assert_eq!(messages[0]["type"], "flex", "{}", campaign.id);
        assert_eq!(messages[0]["contents"]["type"], "bubble", "{}", campaign.id);
        assert!(!messages[0]["altText"].as_str().unwrap().is_empty());
    }
    let ctx = |event| RenderContext {
        member_id: Some("M00001"),
        member: Some(&member),
        line_user_id: Some("U7db3d96b0f76480d94a7ded5f234fb96"),
        trigger_key: Some("entered:1"),
        event,
        now: utc("2026-08-01T00:00:00Z"),
        timezone: chrono_tz::Asia::Tokyo,
        public_base_url: "https://renkei.example/",
    };
    let reservation = set.render(set.get("reservation_reminder").unwrap(), &ctx(Some(&event))).unwrap();
    assert_eq!(reservation[0]["altText"], "ご予約のお知らせ: 08月12日 13:13から");
    let text = serde_json::to_string(&reservation[0]["contents"]).unwrap();
    assert!(text.contains("2026年08月12日 13:13") && text.contains("R002197"), "{text}");
    let token = text.split("https://renkei.example/t/").nth(1).and_then(|rest| rest.split('"').next()).unwrap();
    let link = LinkKeys::new(&[LINK_KEY]).unwrap().open(token).unwrap();
    assert_eq!(
        (link.campaign_id.as_str(), link.line_user_id.as_str()),
        ("reservation_reminder", "U7db3d96b0f76480d94a7ded5f234fb96")
    );
    assert!(link.target.starts_with("https://shop.example/reservations"), "{}", link.target);
    assert!(!text.contains("U7db3d96b0f76480d94a7ded5f234fb96"), "{text}");
    let cart = set.render(set.get("cart_reminder").unwrap(), &ctx(None)).unwrap();
    assert_eq!(cart[0]["altText"], "渡辺 美咲さん、カートに商品が残っています");
    let coupon = serde_json::to_string(&set.render(set.get("birthday_coupon").unwrap(), &ctx(None)).unwrap()).unwrap();
    assert!(coupon.contains("¥1,000 OFF") && coupon.contains("2026年08月01日"), "{coupon}");
}

#[test]
fn the_gold_news_is_identical_for_every_member_so_it_can_be_multicast() {
    let set = shipped();
    let news = set.get("gold_members_news").unwrap();
    let a = member();
    let b = json!({"name": "小林 健太"}).as_object().unwrap().clone();
    let render = |member: &Map<String, Value>, id: &str, user: &str| {
        set.render(
            news,
            &RenderContext {
                member_id: Some(id),
                member: Some(member),
                line_user_id: Some(user),
                trigger_key: Some("entered:1"),
                event: None,
                now: utc("2026-08-01T01:00:00Z"),
                timezone: chrono_tz::Asia::Tokyo,
                public_base_url: "https://renkei.example",
            },
        )
        .unwrap()
    };
    assert_eq!(
        render(&a, "M00001", "U7db3d96b0f76480d94a7ded5f234fb96"),
        render(&b, "M00002", "U8b9f6668758c4fe7e8d334d84fc06722")
    );
}

#[test]
fn the_restock_notice_is_identical_for_every_favouriter_and_shipping_names_the_parcel() {
    let set = shipped();
    let restock = set.get("restock_notice").unwrap();
    let Trigger::Fanout { event_type, to, .. } = &restock.trigger else { panic!("fan-out trigger") };
    assert_eq!((event_type.as_str(), to.event_types.as_slice()), ("restock", ["favorite".to_string()].as_slice()));
    assert_eq!((to.match_props.as_slice(), to.within), (["sku".to_string()].as_slice(), chrono::Duration::days(90)));
    let event = json!({"type": "restock", "occurred_at": "2026-08-01T10:00:00+09:00",
        "properties": {"sku": "TS-001", "product_name": "リネンシャツ 白 M", "price": 6980, "stock": 12}});
    let a = member();
    let b = json!({"name": "小林 健太"}).as_object().unwrap().clone();
    let render = |campaign, member: &Map<String, Value>, id: &str, user: &str, event: &Value| {
        set.render(
            campaign,
            &RenderContext {
                member_id: Some(id),
                member: Some(member),
                line_user_id: Some(user),
                trigger_key: Some("fanout:0123456789abcdef:1"),
                event: Some(event),
                now: utc("2026-08-01T01:00:00Z"),
                timezone: chrono_tz::Asia::Tokyo,
                public_base_url: "https://renkei.example",
            },
        )
        .unwrap()
    };
    let first = render(restock, &a, "M00001", "U7db3d96b0f76480d94a7ded5f234fb96", &event);
    assert_eq!(first, render(restock, &b, "M00002", "U8b9f6668758c4fe7e8d334d84fc06722", &event), "multicast");
    assert_eq!(first[0]["altText"], "再入荷のお知らせ: リネンシャツ 白 M");
    let text = serde_json::to_string(&first[0]["contents"]).unwrap();
    assert!(text.contains("¥6,980") && text.contains("https://shop.example/items/TS-001"), "{text}");

    let shipped_order = set.get("order_shipped").unwrap();
    assert_eq!(shipped_order.trigger.event_type(), Some("order_shipped"));
    let event = json!({"type": "order_shipped", "occurred_at": "2026-08-01T10:00:00+09:00",
        "properties": {"order_id": "O001484", "carrier": "ヤマト運輸", "tracking_number": "1234-5678-9012"}});
    let message = render(shipped_order, &a, "M00001", "U7db3d96b0f76480d94a7ded5f234fb96", &event);
    assert_eq!(message[0]["altText"], "渡辺 美咲さん、ご注文の商品を発送しました（注文番号 O001484）");
    let text = serde_json::to_string(&message[0]["contents"]).unwrap();
    assert!(text.contains("ヤマト運輸") && text.contains("1234-5678-9012"), "{text}");
}
