//! Turns one reply-rule file into a [`ReplyRule`], reporting every problem
//! at its `file:line:col` (the campaigns parser's reading steps).

use super::{ReplyConditions, ReplyMatch, ReplyMessage, ReplyRule, TextMatch, normalize};
use crate::parse::{MAX_MESSAGES, Parser, has, is_valid_template_name};
use renkei_segments::diagnostic::{NodeReader, shorten};
use renkei_segments::yaml::{Node, NodeKind, Pos, parse_document};
use renkei_segments::{Diagnostic, SegmentSet};
use std::path::Path;

const RULE_KEYS: [&str; 7] = ["id", "name", "description", "match", "when", "reply", "unlinked_reply"];
/// Postback actions renkei itself answers (ID連携 and its undoing).
pub(crate) const RESERVED_ACTIONS: [&str; 2] = ["link", "unlink"];
/// LINE's longest text message.
const MAX_TEXT_CHARS: usize = 5_000;

/// Where a rule's messages were written, for problems found later (an
/// unknown template, a text that does not compile).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplyPositions {
    /// `template:` (Flex) or `text:`.
    pub body: Pos,
    pub alt_text: Pos,
}

/// What one file yielded: its id (even when the rest is invalid, so that
/// duplicates are still found) and, if valid, the rule with its positions
/// (`reply` then `unlinked_reply`).
pub(crate) struct ParsedRule {
    pub id: Option<(String, Pos)>,
    pub rule: Option<(ReplyRule, Vec<ReplyPositions>)>,
}

pub(crate) fn parse_rule_file(
    file: &Path,
    text: &str,
    segments: &SegmentSet,
    diagnostics: &mut Vec<Diagnostic>,
) -> ParsedRule {
    let mut parser = Parser { r: NodeReader::new(file, diagnostics), segments };
    match parse_document(text) {
        Ok(root) => rule(&mut parser, file, &root),
        Err(error) => {
            parser.r.error(error.pos, error.message);
            ParsedRule { id: None, rule: None }
        }
    }
}

fn rule(p: &mut Parser<'_>, file: &Path, root: &Node) -> ParsedRule {
    let errors_before = p.r.errors;
    let Some(entries) = p.r.entries(root, "a reply rule (a map with id, match, reply)") else {
        return ParsedRule { id: None, rule: None };
    };
    p.unknown_keys(&entries, &RULE_KEYS, "a reply rule");
    p.require(&entries, root, &["id", "match", "reply"], "a reply rule");
    let (mut id, mut matches, mut when) = (None, None, Some(ReplyConditions::default()));
    let (mut reply, mut unlinked_reply) = (None, None);
    for &(key, _, value) in &entries {
        match key {
            "id" => id = p.r.id("reply rule", value),
            "name" | "description" => {
                p.r.string(value);
            }
            "match" => matches = match_spec(p, value),
            "when" => when = conditions(p, value),
            "reply" => reply = messages(p, value, "reply"),
            "unlinked_reply" => unlinked_reply = messages(p, value, "unlinked_reply").map(Some),
            _ => {}
        }
    }
    if let (Some(conditions), Some(_)) = (&when, &unlinked_reply) {
        if conditions.linked == Some(false) {
            p.r.error(root.pos, "`unlinked_reply` cannot be used with `when: { linked: false }`: only unlinked users match it, and they get `reply`");
        }
    }
    let valid = p.r.errors == errors_before;
    let rule = match (id.clone(), matches, when, reply, unlinked_reply.unwrap_or(None)) {
        (Some((id, _)), Some(matches), Some(when), Some((reply, mut positions)), unlinked) if valid => {
            let unlinked_reply = unlinked.map(|(messages, more)| {
                positions.extend(more);
                messages
            });
            Some((ReplyRule { id, file: file.to_path_buf(), matches, when, reply, unlinked_reply }, positions))
        }
        _ => None,
    };
    ParsedRule { id, rule }
}

/// `{ text: { equals | prefix | contains: TEXT } }` or `{ postback: { action: NAME } }`.
fn match_spec(p: &mut Parser<'_>, node: &Node) -> Option<ReplyMatch> {
    let expected = "a match (a map with one of text, postback)";
    let entries = p.r.entries(node, expected)?;
    p.unknown_keys(&entries, &["text", "postback"], "`match`");
    if entries.len() != 1 {
        p.r.error(node.pos, "`match` needs exactly one of `text` or `postback`");
        return None;
    }
    let (key, _, value) = entries[0];
    match key {
        "text" => {
            let inner = p.r.entries(value, "a text match (a map with one of equals, prefix, contains)")?;
            p.unknown_keys(&inner, &["equals", "prefix", "contains"], "`match.text`");
            if inner.len() != 1 {
                p.r.error(value.pos, "`match.text` needs exactly one of `equals`, `prefix` or `contains`");
                return None;
            }
            let (mode, _, pattern) = inner[0];
            let mode = match mode {
                "equals" => TextMatch::Equals,
                "prefix" => TextMatch::Prefix,
                "contains" => TextMatch::Contains,
                _ => return None,
            };
            let text = scalar_text(p, pattern)?;
            let normalized = normalize(&text);
            if normalized.is_empty() {
                p.r.error(pattern.pos, "the text to match must not be empty");
                return None;
            }
            Some(ReplyMatch::Text { mode, pattern: normalized })
        }
        "postback" => {
            let inner = p.r.entries(value, "a postback match (a map with action)")?;
            p.unknown_keys(&inner, &["action"], "`match.postback`");
            p.require(&inner, value, &["action"], "`match.postback`");
            let (_, _, action_node) = *inner.iter().find(|(k, _, _)| *k == "action")?;
            let action = scalar_text(p, action_node)?;
            if action.is_empty() || action.contains(['&', '=']) {
                p.r.error(action_node.pos, "a postback action must be non-empty, without `&` or `=`");
                return None;
            }
            if RESERVED_ACTIONS.contains(&action.as_str()) {
                p.r.error(
                    action_node.pos,
                    format!("postback action `{action}` is renkei's own (ID連携); choose another name"),
                );
                return None;
            }
            Some(ReplyMatch::Postback { action })
        }
        _ => None,
    }
}

/// A string, or a number written bare (`equals: 100`).
fn scalar_text(p: &mut Parser<'_>, node: &Node) -> Option<String> {
    match &node.kind {
        NodeKind::Str(text) => Some(text.clone()),
        NodeKind::Int(_) | NodeKind::UInt(_) | NodeKind::Float(_) => node.key_text(),
        _ => {
            p.r.wrong_type(node, "a string");
            None
        }
    }
}

/// `{ linked: BOOL, segment: ID }`, both optional.
fn conditions(p: &mut Parser<'_>, node: &Node) -> Option<ReplyConditions> {
    let errors_before = p.r.errors;
    let entries = p.r.entries(node, "conditions (a map with linked, segment)")?;
    p.unknown_keys(&entries, &["linked", "segment"], "`when`");
    let mut conditions = ReplyConditions::default();
    for &(key, _, value) in &entries {
        match (key, &value.kind) {
            ("linked", NodeKind::Bool(linked)) => conditions.linked = Some(*linked),
            ("linked", _) => p.r.wrong_type(value, "true or false"),
            ("segment", _) => conditions.segment = p.segment_ref(value),
            _ => {}
        }
    }
    (p.r.errors == errors_before).then_some(conditions)
}

/// A list of 1 to 5 messages: `{ template, alt_text }` (Flex) or `{ text }`.
fn messages(p: &mut Parser<'_>, node: &Node, what: &str) -> Option<(Vec<ReplyMessage>, Vec<ReplyPositions>)> {
    let NodeKind::Seq(items) = &node.kind else {
        p.r.wrong_type(node, "a list of 1 to 5 messages");
        return None;
    };
    if items.is_empty() || items.len() > MAX_MESSAGES {
        p.r.error(node.pos, format!("`{what}` has 1 to {MAX_MESSAGES} messages, found {}", items.len()));
        return None;
    }
    let errors_before = p.r.errors;
    let mut out = Vec::with_capacity(items.len());
    let mut positions = Vec::with_capacity(items.len());
    for item in items {
        let expected = "a message (a map with template and alt_text, or text)";
        let Some(entries) = p.r.entries(item, expected) else { continue };
        p.unknown_keys(&entries, &["template", "alt_text", "text"], "a reply message");
        let value = |key: &str| entries.iter().find(|(k, _, _)| *k == key).map(|(_, _, v)| *v);
        if has(&entries, "text") {
            if has(&entries, "template") || has(&entries, "alt_text") {
                p.r.error(item.pos, "a reply message has either `text`, or `template` with `alt_text`, not both");
                continue;
            }
            let Some(node) = value("text") else { continue };
            let Some(text) = p.r.string(node) else { continue };
            if text.trim().is_empty() || text.chars().count() > MAX_TEXT_CHARS {
                p.r.error(node.pos, format!("`text` must have 1 to {MAX_TEXT_CHARS} characters"));
                continue;
            }
            out.push(ReplyMessage::Text { text });
            positions.push(ReplyPositions { body: node.pos, alt_text: node.pos });
            continue;
        }
        p.require(&entries, item, &["template", "alt_text"], "a Flex reply message");
        let (Some(template_node), Some(alt_node)) = (value("template"), value("alt_text")) else { continue };
        let template = p.r.string(template_node).filter(|name| {
            let valid = is_valid_template_name(name);
            if !valid {
                p.r.error(
                    template_node.pos,
                    format!(
                        "invalid template name {:?}: letters, digits, `_` and `-` only (the file is templates/NAME.json.hbs)",
                        shorten(name)
                    ),
                );
            }
            valid
        });
        let alt_text = p.r.string(alt_node).filter(|text| {
            let valid = !text.trim().is_empty();
            if !valid {
                p.r.error(alt_node.pos, "`alt_text` must not be empty");
            }
            valid
        });
        if let (Some(template), Some(alt_text)) = (template, alt_text) {
            out.push(ReplyMessage::Flex { template, alt_text });
            positions.push(ReplyPositions { body: template_node.pos, alt_text: alt_node.pos });
        }
    }
    (p.r.errors == errors_before).then_some((out, positions))
}
