//! What renkei says to users: campaign YAML, reply rules, rich-menu rules,
//! Flex template rendering and the time rules (cron, quiet hours, event timing).
//!
//! - [`CampaignSet::load`] reads every campaign file and the templates they
//!   name, validated against the segments; every problem is a [`Diagnostic`]
//!   shown as `file:line:col: message`, and any problem means nothing loads.
//! - [`CampaignSet::render`] renders a campaign's Flex messages for one
//!   recipient ([`RenderContext`]); values are JSON-escaped so any member data
//!   renders valid JSON (see [`template`]).
//! - [`Timing::send_at`], [`Unless::cancels`], [`QuietHours::release_at`] and
//!   [`schedule`] are the time rules; [`RichMenuRules`] picks a user's menu.
//!
//! Everything is pure (no network, no database, no clock: time is always
//! passed in) except the `load` functions, which read files.

pub mod link;
pub mod model;
pub mod outcome;
mod parse;
pub mod replies;
pub mod rich_menu;
pub mod schedule;
mod set;
pub mod template;

pub use link::{LinkError, LinkKeys, LinkPayload, MemberCode};
pub use model::{
    Campaign, Exit, FanoutTarget, FrequencyCap, Goal, Holdout, MessageSpec, QuietHours, Step, Timing, Trigger, Unless,
    Variant, aggregation_unit,
};
pub use renkei_segments::Diagnostic;
pub use replies::ReplySet;
pub use rich_menu::{RichMenuRule, RichMenuRules, is_rich_menu_id};
pub use set::{CampaignSet, RenderMemo, TEMPLATE_EXTENSION};
pub use template::{RenderContext, RenderError};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_can_be_shared_across_threads() {
        fn shared<T: Send + Sync + 'static>(_: &T) {}
        let set = CampaignSet::default();
        shared(&set);
        assert!(set.is_empty());
        assert_eq!(set.len(), 0);
        assert!(set.get("anything").is_none());
    }
}
