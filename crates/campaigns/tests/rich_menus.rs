//! Rich-menu rules: first match wins, else the default; every error with its position.
#![allow(clippy::unwrap_used)]

mod common;

use common::segments;
use renkei_campaigns::{RichMenuRules, is_rich_menu_id};
use std::collections::BTreeSet;
use std::path::PathBuf;

const GOLD: &str = "richmenu-0123456789abcdef0123456789abcdef";
const CART: &str = "richmenu-00112233445566778899aabbccddeeff";
const DEFAULT: &str = "richmenu-fedcba9876543210fedcba9876543210";

fn parse(text: &str) -> Result<RichMenuRules, Vec<String>> {
    RichMenuRules::from_source(PathBuf::from("rich_menus.yaml"), text, &segments())
        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

fn memberships(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(ToString::to_string).collect()
}

#[test]
fn first_matching_rule_wins_else_default() {
    let rules = parse(&format!(
        "rules:\n  - segment: gold_members\n    rich_menu: {GOLD}\n  - segment: cart_abandoners\n    rich_menu: {CART}\ndefault: {DEFAULT}\n"
    ))
    .unwrap();
    assert_eq!(rules.menu_for(&memberships(&["gold_members", "cart_abandoners"])), Some(GOLD));
    assert_eq!(rules.menu_for(&memberships(&["cart_abandoners"])), Some(CART));
    assert_eq!(rules.menu_for(&memberships(&["birthday_today"])), Some(DEFAULT));
    assert_eq!(rules.menu_for(&memberships(&[])), Some(DEFAULT));
    assert_eq!(rules.segments(), ["cart_abandoners", "gold_members"].into_iter().collect());
}

#[test]
fn without_a_default_unmatched_users_get_none() {
    let rules = parse(&format!("rules:\n  - segment: gold_members\n    rich_menu: {GOLD}\n")).unwrap();
    assert_eq!(rules.menu_for(&memberships(&["gold_members"])), Some(GOLD));
    assert_eq!(rules.menu_for(&memberships(&["cart_abandoners"])), None);
}

#[test]
fn missing_or_empty_file_means_no_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = RichMenuRules::load(&dir.path().join("rich_menus.yaml"), &segments()).unwrap();
    assert_eq!(rules, RichMenuRules::default());
    assert_eq!(rules.menu_for(&memberships(&["gold_members"])), None);
    assert_eq!(parse("").unwrap(), RichMenuRules::default());
    assert_eq!(parse(&format!("default: {DEFAULT}\n")).unwrap().default.as_deref(), Some(DEFAULT));
}

#[test]
fn unknown_segment_is_an_error() {
    assert_eq!(
        parse(&format!("rules:\n  - segment: platinum\n    rich_menu: {GOLD}\n")).unwrap_err(),
        vec!["rich_menus.yaml:2:14: unknown segment `platinum`"]
    );
}

#[test]
fn invalid_rich_menu_ids_are_errors() {
    assert_eq!(
        parse("rules:\n  - segment: gold_members\n    rich_menu: richmenu-XYZ\ndefault: menu1\n").unwrap_err(),
        vec![
            r#"rich_menus.yaml:3:16: invalid rich menu id "richmenu-XYZ": expected `richmenu-` and 32 lowercase hex digits"#,
            r#"rich_menus.yaml:4:10: invalid rich menu id "menu1": expected `richmenu-` and 32 lowercase hex digits"#,
        ]
    );
    assert!(is_rich_menu_id(GOLD));
    assert!(!is_rich_menu_id("richmenu-0123456789ABCDEF0123456789abcdef"));
    assert!(!is_rich_menu_id("richmenu-0123456789abcdef0123456789abcde"));
}

#[test]
fn unknown_keys_and_missing_keys_are_errors() {
    assert_eq!(
        parse(&format!("rules:\n  - segment: gold_members\n    menu: {GOLD}\nfallback: {DEFAULT}\n")).unwrap_err(),
        vec![
            "rich_menus.yaml:2:5: missing required key `rich_menu` in a rich menu rule",
            "rich_menus.yaml:3:5: unknown key `menu` in a rich menu rule (expected one of: segment, rich_menu)",
            "rich_menus.yaml:4:1: unknown key `fallback` in the rich menu file (expected one of: rules, default)",
        ]
    );
}
