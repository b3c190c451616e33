//! What the dispatcher's benchmarks share: the users they load, the
//! campaigns they send and the templates those render.
#![allow(dead_code)]

use chrono::Utc;
use renkei_campaigns::CampaignSet;
use renkei_core::{LineUserId, MemberId, MemberPatch};
use renkei_evaluator::Cause;
use renkei_segments::SegmentSet;
use renkei_store::Store;
use renkei_store::membership::MembershipUpdate;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const SEGMENT: &str = "id: everyone\nname: Everyone\nrule:\n  linked: true\n";
pub const PERSONAL: &str = r#"{"type":"bubble","body":{"type":"box","layout":"vertical","contents":[{"type":"text","text":"{{member.name}}さん、ポイントは{{member.points}}点です"}]}}"#;
pub const SAME: &str = r#"{"type":"bubble","body":{"type":"box","layout":"vertical","contents":[{"type":"text","text":"週末セール開催中"}]}}"#;
/// A personalised campaign to everyone: one push per user.
pub const PUSH_CAMPAIGN: &str = "id: bench\nname: bench\ntrigger:\n  schedule: \"0 0 9 * * *\"\n  audience: everyone\nmessages:\n  - template: bench\n    alt_text: \"{{member.name}}さんへ\"\n";
/// The same message to everyone: multicasts of 500.
pub const MULTICAST_CAMPAIGN: &str = "id: bench\nname: bench\ntrigger:\n  schedule: \"0 0 9 * * *\"\n  audience: everyone\nmessages:\n  - template: bench\n    alt_text: 週末セール\n";

/// Members m0..m{n} linked to U…, in the `everyone` segment.
pub async fn load_users(store: &Arc<dyn Store>, n: u64) -> Result<(), BoxError> {
    let now = Utc::now();
    let mut i = 0;
    while i < n {
        let end = (i + 10_000).min(n);
        let patches: Vec<MemberPatch> = (i..end)
            .map(|k| MemberPatch {
                member_id: MemberId::parse(&format!("m{k}")).expect("member id"),
                attributes: json!({"name": format!("会員{k}"), "points": k % 5000})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                line_user_id: Some(LineUserId::parse(&format!("U{k:032x}")).expect("user id")),
            })
            .collect();
        store.upsert_members(&patches, now).await?;
        let updates: Vec<MembershipUpdate> = patches
            .iter()
            .filter_map(|p| p.line_user_id.clone())
            .map(|u| MembershipUpdate {
                line_user_id: u,
                segments: BTreeSet::from(["everyone".to_string()]),
                next_due: None,
            })
            .collect();
        store.apply_memberships(&updates, now, Cause::Recompute).await?;
        i = end;
    }
    Ok(())
}

/// The campaign `campaign_yaml` (id `bench`) with its template `bench`.
pub fn campaign_set(campaign_yaml: &str, template: &str) -> Result<Arc<CampaignSet>, BoxError> {
    let segments = SegmentSet::from_sources([(PathBuf::from("everyone.yaml"), SEGMENT.to_string())])
        .map_err(|d| format!("{d:?}"))?;
    Ok(Arc::new(
        CampaignSet::from_sources(
            vec![(PathBuf::from("bench.yaml"), campaign_yaml.to_string())],
            vec![("bench".to_string(), PathBuf::from("bench.json.hbs"), template.to_string())],
            &segments,
        )
        .map_err(|d| format!("{d:?}"))?,
    ))
}
